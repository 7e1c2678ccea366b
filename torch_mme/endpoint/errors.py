"""Errors the endpoint answers, in the shapes boto3's sagemaker-runtime client turns into its exceptions.

boto3 reads the error code from ``__type`` (and the ``x-amzn-ErrorType``
header): ``ValidationError`` and ``ModelError`` become
``client.exceptions.ValidationError`` / ``ModelError``; ModelError carries the
container's ``OriginalStatusCode`` and ``OriginalMessage``.
"""

from __future__ import annotations

from typing import Any


class EndpointError(Exception):
    status = 400
    kind = "ValidationError"

    def body(self) -> dict[str, Any]:
        return {"__type": self.kind, "message": str(self)}


class ValidationError(EndpointError):
    """The request or its TargetModel is wrong: missing, not in the store, not a safe archive (400)."""


class ModelError(EndpointError):
    """The container answered with an error (424), passed on with its original status and message."""

    status = 424
    kind = "ModelError"

    def __init__(self, original_status: int, original_message: str, endpoint: str = "local") -> None:
        side = "client" if original_status < 500 else "server"
        super().__init__(f'Received {side} error ({original_status}) from primary with message "{original_message}".')
        self.original_status = original_status
        self.original_message = original_message
        self.endpoint = endpoint

    def body(self) -> dict[str, Any]:
        return {
            **super().body(),
            "OriginalStatusCode": self.original_status,
            "OriginalMessage": self.original_message,
            "LogStreamArn": f"arn:aws:logs:local:000000000000:log-group:/aws/sagemaker/Endpoints/{self.endpoint}",
        }


class ModelNotReady(EndpointError):
    """The model is still loading after the wait limit; loading goes on, and a retry will find it (429)."""

    status = 429
    kind = "ModelNotReadyException"


class ServiceUnavailable(EndpointError):
    """The container is not answering (503)."""

    status = 503
    kind = "ServiceUnavailable"


class InternalFailure(EndpointError):
    """A bug on our side (500); the traceback is in the endpoint's log."""

    status = 500
    kind = "InternalFailure"
