"""The endpoint's errors (``torch_mme.errors``' hierarchy), in the shapes boto3's sagemaker-runtime client turns
into its exceptions.

boto3 reads the error code from the ``x-amzn-ErrorType`` header (and ``__type``):
``ValidationError`` and ``ModelError`` become ``client.exceptions.ValidationError`` /
``ModelError``; ModelError carries the container's ``OriginalStatusCode`` and ``OriginalMessage``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch_mme.errors import ServingError, error_body


class EndpointError(ServingError):
    """An error of the runtime API: its body is the AWS JSON protocol's (``body``), not MMS's."""

    status = 400
    type_name: ClassVar[str] = "ValidationError"

    def aws_fields(self) -> dict[str, Any]:
        """What the body carries besides ``__type`` and ``message``."""
        return {}

    def body(self, max_message: int | None = None) -> bytes:
        return error_body(self.status, self.type_name, str(self), self.aws_fields())


class ValidationError(EndpointError):
    """The request or its TargetModel is wrong: missing, not in the store, not a safe archive (400)."""


class ModelError(EndpointError):
    """The container answered with an error (424), passed on with its original status and message."""

    status = 424
    type_name = "ModelError"

    def __init__(self, original_status: int, original_message: str, endpoint: str = "local") -> None:
        side = "client" if original_status < 500 else "server"
        super().__init__(f'Received {side} error ({original_status}) from primary with message "{original_message}".')
        self.original_status = original_status
        self.original_message = original_message
        self.endpoint = endpoint

    def aws_fields(self) -> dict[str, Any]:
        return {
            "OriginalStatusCode": self.original_status,
            "OriginalMessage": self.original_message,
            "LogStreamArn": f"arn:aws:logs:local:000000000000:log-group:/aws/sagemaker/Endpoints/{self.endpoint}",
        }


class ModelNotReady(EndpointError):
    """The model is still loading after the wait limit; loading goes on, and a retry will find it (429)."""

    status = 429
    type_name = "ModelNotReadyException"


class ServiceUnavailable(EndpointError):
    """The container is not answering (503)."""

    status = 503
    type_name = "ServiceUnavailable"


class InternalFailure(EndpointError):
    """A bug on our side (500); the traceback is in the endpoint's log."""

    status = 500
    type_name = "InternalFailure"
