"""Typed errors, each carrying the HTTP status it is answered with.

The MMS entry point maps them to a status and a short JSON body in one place;
the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import json

MAX_MESSAGE = 1000
"""The longest ``message`` an error body carries."""


class HandlerError(Exception):
    """Base class: ``status`` is the HTTP status, ``str(self)`` the one-line reason."""

    status = 500

    def to_json(self) -> str:
        message = str(self)
        if len(message) > MAX_MESSAGE:  # a reason that quotes the request body (a CSV cell, say) stays short
            message = message[: MAX_MESSAGE - 3] + "..."
        return json.dumps({"code": self.status, "type": type(self).__name__, "message": message})


class BadRequest(HandlerError):
    """The body cannot be decoded, or does not fit the model (400)."""

    status = 400


class PayloadTooLarge(BadRequest):
    """The body would decode to more than the decoders allow (413; ``Settings.max_decoded_bytes``).

    A BadRequest with its own status: whatever handles a body the client got wrong handles this one too.
    """

    status = 413


class UnsupportedContentType(HandlerError):
    status = 415


class UnsupportedAccept(HandlerError):
    """Accept names no type this model can answer in (415, as the toolkit's ``UnsupportedFormatError``:
    it uses one error for an unknown Content-Type and an unknown Accept)."""

    status = 415


class NotAcceptable(HandlerError):
    """The type negotiated from Accept cannot represent this result (406): a dict as CSV, a 3-D CSV,
    an object array as ``.npy`` (that would need a pickle)."""

    status = 406


class ModelLoadError(HandlerError):
    """The model directory cannot be turned into a model (500 at LoadModel)."""

    status = 500


class ModelNotFound(ModelLoadError):
    status = 404


class DependencyInstallError(ModelLoadError):
    """The model's ``code/requirements.txt`` could not be installed (500 at LoadModel); the message has pip's reason."""


class ModelOutsideRoot(ModelLoadError):
    """A LoadModel ``url`` that resolves outside the models root (400)."""

    status = 400


class OutOfMemory(HandlerError):
    """Not enough memory to load or run the model (507: SageMaker then unloads models)."""

    status = 507


class ToolkitStatusError(HandlerError):
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


class PredictionError(HandlerError):
    """The model or the user's predict/output code failed (500)."""

    status = 500


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
