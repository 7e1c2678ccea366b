"""Content types in and out: a table from MIME type to decode/encode function.

Decoding turns a request body into a numpy array (or a dict of arrays for
``.npz``); encoding turns a result into bytes for the first acceptable type
in the Accept header. Bodies are never unpickled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from handler.errors import BadRequest, NotAcceptable, UnsupportedAccept, UnsupportedContentType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
"""Bodies the toolkit decodes to ``str`` before ``input_fn``/``transform_fn`` (``content_types.UTF8_TYPES``)."""


def media_type(header: str | None) -> str:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``; empty for None."""
    return (header or "").split(";", 1)[0].strip().lower()


def _decode_json(body: bytes) -> np.ndarray:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    return _numeric_array(value, "JSON")


def _decode_csv(body: bytes) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("CSV body is not UTF-8 text") from None
    rows = [line.split(",") for line in text.splitlines() if line.strip()]
    if rows and any(len(r) != len(rows[0]) for r in rows):
        raise BadRequest("CSV rows have different numbers of columns")
    try:
        return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float32)
    except ValueError as exc:
        raise BadRequest(f"CSV holds a value that is not a number: {exc}") from None


def _decode_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for a bad file
        raise BadRequest(f"body is not a valid .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise BadRequest("body is not a .npy array")
    _check_numeric(array)
    return array


def _decode_npz(body: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise BadRequest(f"body is not a valid .npz archive: {exc}") from None
    if not arrays:
        raise BadRequest(".npz archive holds no arrays")
    for array in arrays.values():
        _check_numeric(array)
    return arrays


def _numeric_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, (list, int, float)) or isinstance(value, bool):
        raise BadRequest(f"{what} body must be an array of numbers, nested to the tensor's shape")
    try:
        array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} array is ragged or holds values that are not numbers") from None
    return array


def _check_numeric(array: np.ndarray) -> None:
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"array dtype {array.dtype} is not numeric")


DECODERS: dict[str, Callable[[bytes], Any]] = {
    JSON: _decode_json,
    CSV: _decode_csv,
    NPY: _decode_npy,
    NPZ: _decode_npz,
}


def decode(body: bytes, content_type: str | None) -> np.ndarray | dict[str, np.ndarray]:
    """Decode a request body; a missing Content-Type is read as JSON."""
    kind = media_type(content_type) or JSON
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise UnsupportedContentType(f"Content-Type {kind!r} is not supported; use one of {sorted(DECODERS)}")
    return decoder(body)


def to_numpy(value: Any) -> Any:
    """Tensors (any device, any dtype) to numpy arrays; lists, dicts and tuples element-wise."""
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        try:
            return tensor.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return tensor.float().numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value


def _encode_json(value: Any) -> bytes:
    """``json.dumps`` with its default separators (``[42, 6, 9]``), as the toolkit's ``_array_to_json``."""
    return json.dumps(_jsonable(value)).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


_SAVABLE = "biufcUS"
"""Array kinds ``np.save`` writes without a pickle (numbers, booleans, strings)."""


def _as_array(value: Any, kind: str, kinds: str = _SAVABLE) -> np.ndarray:
    if isinstance(value, dict):
        raise NotAcceptable(f"{kind} cannot hold a result with several named outputs; accept {NPZ} or {JSON}")
    try:
        array = np.asarray(value)
    except ValueError:
        raise NotAcceptable(f"the result is not a single array; accept {JSON}") from None
    if array.dtype.kind not in kinds:
        raise NotAcceptable(f"a {array.dtype} result cannot be encoded as {kind}; accept {JSON}")
    return array


def _encode_csv(value: Any) -> bytes:
    """``np.savetxt(delimiter=",", fmt="%s")``, as the toolkit's ``_array_to_csv``: a 1-D result is one value
    per line, a 2-D one a row per line; a single value is one line (where ``savetxt`` would fail)."""
    array = _as_array(value, CSV, "biufUS")
    if array.ndim > 2:
        raise NotAcceptable(f"{CSV} holds 1-D or 2-D results; this one has shape {list(array.shape)}")
    stream = io.StringIO()
    np.savetxt(stream, array.reshape(1) if array.ndim == 0 else array, delimiter=",", fmt="%s")
    return stream.getvalue().encode()


def _encode_npy(value: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, _as_array(value, NPY), allow_pickle=False)
    return buffer.getvalue()


def _encode_npz(value: Any) -> bytes:
    arrays = value if isinstance(value, dict) else {"output": value}
    buffer = io.BytesIO()
    np.savez(buffer, **{str(k): _as_array(v, NPZ) for k, v in arrays.items()})
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    JSON: _encode_json,
    CSV: _encode_csv,
    NPY: _encode_npy,
    NPZ: _encode_npz,
}


def negotiate(accept: str | None, default: str = JSON, supported: tuple[str, ...] | None = None) -> str:
    """The media type to answer with: the first supported type in Accept, by q-value.

    A missing Accept, or ``*/*``, gives ``default``. Raises UnsupportedAccept (415, the toolkit's status
    for an Accept it cannot encode) when nothing listed can be produced.
    """
    supported = supported or tuple(ENCODERS)
    if not accept or not accept.strip():
        return default
    offers: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        kind, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if kind and quality > 0:
            offers.append((-quality, position, kind.lower()))
    for _, _, kind in sorted(offers):
        if kind == ANY:
            return default
        if kind == "application/*":
            return default if default.startswith("application/") else JSON
        if kind in supported:
            return kind
    raise UnsupportedAccept(f"Accept {accept!r} names no supported type; use one of {sorted(supported)}")


def encode(value: Any, accept: str | None, default: str = JSON) -> tuple[bytes, str]:
    """Encode a result for the Accept header; returns (body, content type).

    For JSON and CSV a tensor result is first turned into Python numbers (``tensor.numpy().tolist()``),
    as the PyTorch toolkit's ``default_output_fn`` does, so the text is the same to the digit (a float32
    0.1 reads ``0.10000000149011612``); ``.npy``/``.npz`` keep the tensor's dtype.
    """
    kind = negotiate(accept, default)
    is_tensor = hasattr(value, "detach")
    value = to_numpy(value)
    if is_tensor and kind in UTF8_TYPES:
        value = value.tolist()
    return ENCODERS[kind](value), kind
