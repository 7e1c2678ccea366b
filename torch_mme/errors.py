"""Every error a client can be answered with: its HTTP status, its type name and a message.

The one vocabulary of the container (the front, its HTTP server, the handler in
MMS's workers) and of the local endpoint. Each class says its status and the
``type`` clients see; ``error_body`` is the one writer of the JSON body, in
MMS's shape (``{"code": 404, "type": "ModelNotFoundException", "message": ...}``)
for the container, and in the AWS JSON protocol's shape (``{"__type": ...,
"message": ...}``) that boto3 reads for the endpoint. Tracebacks go to the log,
never to the client.

Where MMS has its own name for an error it also answers itself (an unknown
model, a name already registered), the class uses MMS's name: the front passes
MMS's answers through, so the client sees one name whoever answered.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

MAX_MESSAGE = 1000
"""The longest ``message`` the handler's error bodies carry (a reason that quotes the request body stays short)."""


def error_body(status: int, type_name: str, message: str, aws_fields: dict[str, Any] | None = None) -> bytes:
    """The JSON body of an error answer: MMS's shape, or with ``aws_fields`` the AWS JSON protocol's (boto3 reads
    ``__type``; the fields are added to it, ``OriginalStatusCode`` and the like)."""
    if aws_fields is None:
        return json.dumps({"code": status, "type": type_name, "message": message}).encode()
    return json.dumps({"__type": type_name, "message": message, **aws_fields}).encode()


class ServingError(Exception):
    """Base class: ``status`` is the HTTP status, ``type_name`` the ``type`` clients see (the class's name unless
    the class says otherwise), ``str(self)`` the one-line message."""

    status: int = 500
    type_name: ClassVar[str] = "ServingError"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The vocabulary is this module's: a class here is named by itself, a subclass elsewhere (the MMS
        # client's, say) is answered as its parent unless it names itself.
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__ and "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__

    def body(self, max_message: int | None = None) -> bytes:
        """This error's JSON body (MMS's shape); ``max_message`` cuts a long message short."""
        message = str(self)
        if max_message is not None and len(message) > max_message:
            message = message[: max_message - 3] + "..."
        return error_body(self.status, self.type_name, message)


class Relayed(ServingError):
    """An error whose status and type another process decided (a worker's load report): passed on as it is."""

    def __init__(self, status: int, type_name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name  # type: ignore[misc]


# --- 4xx: the client's request ---------------------------------------------------------------------


class BadRequest(ServingError):
    """The request cannot be served as sent: malformed HTTP, an invalid name, a body that cannot be decoded or
    does not fit the model (400)."""

    status = 400


class PayloadTooLarge(BadRequest):
    """The body is larger than ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, or would decode to more than the decoders allow
    (413; ``Settings.max_decoded_bytes``). A BadRequest with its own status: whatever handles a body the client
    got wrong handles this one too."""

    status = 413


class InvalidModelConfig(BadRequest):
    """``torch-mme.json`` is not valid: LoadModel answers 400 with the key and the reason."""


class NotFound(ServingError):
    """A route outside the container contract (404)."""

    status = 404


class ModelNotFound(ServingError):
    """No such model: not loaded, being unloaded, or a LoadModel of a folder that does not exist (404).
    MMS's own name for it, which its answers carry too."""

    status = 404
    type_name = "ModelNotFoundException"


class MethodNotAllowed(ServingError):
    status = 405


class NotAcceptable(ServingError):
    """The type negotiated from Accept cannot represent this result (406): a dict as CSV, a 3-D CSV,
    an object array as ``.npy`` (that would need a pickle)."""

    status = 406


class RequestTimeout(ServingError):
    """The request's head or body did not arrive in time (408)."""

    status = 408


class ModelConflict(ServingError):
    """LoadModel of a name already loaded or loading (409), in MMS's name."""

    status = 409
    type_name = "ConflictStatusException"


class UnsupportedContentType(ServingError):
    status = 415


class UnsupportedAccept(ServingError):
    """Accept names no type this model can answer in (415, as the toolkit's ``UnsupportedFormatError``:
    it uses one error for an unknown Content-Type and an unknown Accept)."""

    status = 415


# --- 5xx: the server or the model -----------------------------------------------------------------


class InternalServerError(ServingError):
    """A bug on our side; the traceback is in the log (500)."""


class ModelLoadError(ServingError):
    """The model directory cannot be turned into a model (500 at LoadModel)."""


class ModelOutsideRoot(ModelLoadError):
    """A LoadModel ``url`` (or the folder MMS hands a worker) that resolves outside the models root (400)."""

    status = 400


class DependencyInstallError(ModelLoadError):
    """The model's ``code/requirements.txt`` could not be installed (500 at LoadModel); the message has pip's reason."""


class PredictionError(ServingError):
    """The model or the user's predict/output code failed (500)."""


class ModelServerUnavailable(ServingError):
    """MMS could not be reached, or closed the connection mid-answer (502)."""

    status = 502


class ServiceUnavailable(ServingError):
    """The server is busy: no room for the request's bytes in time (503, with ``Retry-After``)."""

    status = 503


class TooManyConnections(ServiceUnavailable):
    """One connection more than ``TORCH_MME_MAX_CONNECTIONS`` (503, then closed)."""


class ModelRestarting(ServiceUnavailable):
    """The model's processes died and the watchdog is loading it again (503)."""


class ModelServerTimeout(ModelServerUnavailable):
    """MMS did not answer within the timeout plus 30 s (504)."""

    status = 504


class OutOfMemory(ServingError):
    """Not enough memory to load or run the model (507: SageMaker then unloads models). The front's refusal
    before a load and a worker's allocator failure alike."""

    status = 507


class ToolkitStatusError(ServingError):
    """A hook raised the toolkit's ``BaseInferenceToolkitError`` (``GenericInferenceToolkitError(400, "...")``):
    answered with the status the user chose, as the toolkit's ``Transformer.handle_error`` does. The one error
    whose status is the instance's, not the class's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def toolkit_status_error(exc: BaseException) -> ToolkitStatusError | None:
    """The user's status for an exception shaped like the toolkit's (an int ``status_code`` and a ``message``)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599 and hasattr(exc, "message"):
        return ToolkitStatusError(status, str(exc.message).replace("\n", " ")[:MAX_MESSAGE])
    return None


MAX_REASON = 300


def brief(exc: BaseException, with_type: bool = True) -> str:
    """One line about ``exc`` for a client: its type and the last non-empty line of its message.

    TorchScript and CUDA errors carry tracebacks and source inside the message;
    the cause is on the last line. The full text goes to the log.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    name = type(exc).__name__
    if with_type and not text.startswith(name):
        text = f"{name}: {text}" if text else name
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


_OOM_MARKERS = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "CUDA out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for Python's MemoryError and torch's CPU and CUDA allocator failures.

    torch raises ``RuntimeError`` from its CPU allocator and
    ``torch.cuda.OutOfMemoryError`` (a RuntimeError) on the GPU; neither is a
    ``MemoryError``, so MMS would answer 500 instead of 507 without this.
    """
    if isinstance(exc, (MemoryError, OutOfMemory)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)
