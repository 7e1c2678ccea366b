"""Content types in and out: a table from MIME type to decode/encode function.

Decoding turns a request body into a numpy array (or a dict of arrays for
``.npz``); encoding turns a result into bytes for the first acceptable type
in the Accept header. Bodies are never unpickled.

Every decoder bounds what it allocates before allocating it: the bytes of the
decoded arrays (from a JSON or CSV element count, an ``.npy`` header, an
``.npz`` zip directory and each member's ``.npy`` header, all read before
anything is decompressed) may not exceed ``Settings.max_decoded_bytes``
(``TORCH_MME_MAX_DECODED_RATIO`` x ``SAGEMAKER_MAX_PAYLOAD_IN_MB``): beyond it
413. JSON nested deeper than :data:`MAX_JSON_DEPTH` is 400.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from torch_mme.errors import BadRequest, NotAcceptable, UnsupportedAccept, UnsupportedContentType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
"""Bodies the toolkit decodes to ``str`` before ``input_fn``/``transform_fn`` (``content_types.UTF8_TYPES``)."""

MAX_JSON_DEPTH = 32
"""Deepest JSON nesting decoded: numpy 1.x makes arrays of at most 32 dimensions (a deeper body made
``json.loads`` recurse until RecursionError, answered 500)."""
_DEPTH_CHUNK = 2**20
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_LINE = re.compile(r"[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def media_type(header: str | None) -> str:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``; empty for None."""
    return (header or "").split(";", 1)[0].strip().lower()


def _decode_json(body: bytes, limit: int) -> np.ndarray:
    # fewer brackets than the limit cannot nest deeper than it: the common small body skips the scan
    openers = body.count(b"[") + body.count(b"{")
    depth = _json_depth(body) if openers > MAX_JSON_DEPTH else 0
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON body is nested {depth} deep; a tensor has at most {MAX_JSON_DEPTH} dimensions")
    _check_size(body.count(b",") + 1, 4, limit, "JSON array")  # at most one element per comma, plus one
    try:
        value = json.loads(body)
    except RecursionError:  # nesting hidden from the count inside strings
        raise BadRequest(f"JSON body is nested more than {MAX_JSON_DEPTH} deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    return _numeric_array(value, "JSON")


def _json_depth(body: bytes) -> int:
    """The deepest bracket nesting of ``body``, counted over its bytes without parsing (1 MiB at a time).

    Brackets inside strings are counted too: a numeric array holds no strings,
    and ``json.loads`` still guards against what this miscounts (RecursionError).
    """
    depth = deepest = 0
    for start in range(0, len(body), _DEPTH_CHUNK):
        raw = np.frombuffer(body, dtype=np.uint8, count=min(_DEPTH_CHUNK, len(body) - start), offset=start)
        steps = _BRACKET_STEP[raw]
        if not steps.any():
            continue
        levels = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def _decode_csv(body: bytes, limit: int) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("CSV body is not UTF-8 text") from None
    # two passes over the lines, never a list of them: count rows and columns, allocate once, fill row by row
    rows, columns = 0, 0
    for line in _csv_lines(text):
        cells = line.count(",") + 1
        if rows and cells != columns:
            raise BadRequest("CSV rows have different numbers of columns")
        rows, columns = rows + 1, cells
    if not rows:
        return np.array([], dtype=np.float32)
    _check_size(rows * columns, 4, limit, "CSV table")
    array = np.empty((rows, columns), dtype=np.float32)
    try:
        for i, line in enumerate(_csv_lines(text)):
            array[i] = [float(cell) for cell in line.split(",")]
    except ValueError as exc:
        raise BadRequest(f"CSV holds a value that is not a number: {exc}") from None
    return array


def _csv_lines(text: str) -> Iterator[str]:
    """The non-blank lines of ``text``, split where ``str.splitlines`` splits, one at a time."""
    for match in _LINE.finditer(text):
        line = match.group()
        if line.strip():
            yield line


def _decode_npy(body: bytes, limit: int) -> np.ndarray:
    try:
        _check_npy_header(io.BytesIO(body), limit, "body")
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except BadRequest:  # ours (PayloadTooLarge is one too), not numpy's
        raise
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for a bad file
        raise BadRequest(f"body is not a valid .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise BadRequest("body is not a .npy array")
    _check_numeric(array)
    return array


def _decode_npz(body: bytes, limit: int) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, each member's size checked before a byte of it is decompressed.

    The zip directory declares what each member decompresses to (``zipfile``
    never reads a member past that), and each member's ``.npy`` header declares
    its array: both are checked against ``limit`` first, so a small archive of
    zeros that would decompress to gigabytes is refused with nothing allocated.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = archive.infolist()
            _check_size(sum(m.file_size for m in members), 1, limit, ".npz archive's members")
            left = limit
            for member in members:
                name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                with archive.open(member) as stream:
                    left -= _check_npy_header(stream, left, f"member {name!r}")
                with archive.open(member) as stream:
                    arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
    except BadRequest:  # ours (PayloadTooLarge is one too), not numpy's
        raise
    except Exception as exc:  # zipfile and numpy raise BadZipFile, ValueError, OSError, EOFError...
        raise BadRequest(f"body is not a valid .npz archive: {exc}") from None
    if not arrays:
        raise BadRequest(".npz archive holds no arrays")
    for array in arrays.values():
        _check_numeric(array)
    return arrays


def _check_npy_header(stream: BinaryIO, limit: int, what: str) -> int:
    """Read a ``.npy`` header from ``stream``; refuses a non-numeric dtype or an array over ``limit``; its bytes."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # 3.0 only adds UTF-8 field names, for structured dtypes, which are not numeric
        raise ValueError(f"{what}: .npy format version {version[0]}.{version[1]} is not supported")
    _check_numeric(dtype)
    return _check_size(math.prod(shape), dtype.itemsize, limit, f"{what}'s array")


def _check_size(elements: int, itemsize: int, limit: int, what: str) -> int:
    """``elements * itemsize`` bytes, refused with 413 when over ``limit`` (before anything is allocated)."""
    from torch_mme.errors import PayloadTooLarge

    size = elements * itemsize
    if size > limit:
        raise PayloadTooLarge(
            f"the {what} would decode to {size:,} bytes, more than the {limit:,} allowed "
            "(TORCH_MME_MAX_DECODED_RATIO times SAGEMAKER_MAX_PAYLOAD_IN_MB)"
        )
    return size


def _numeric_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, (list, int, float)) or isinstance(value, bool):
        raise BadRequest(f"{what} body must be an array of numbers, nested to the tensor's shape")
    try:
        array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} array is ragged or holds values that are not numbers") from None
    return array


def _check_numeric(array: np.ndarray | np.dtype) -> None:
    dtype = array if isinstance(array, np.dtype) else array.dtype
    if dtype.kind not in "biuf":
        raise BadRequest(f"array dtype {dtype} is not numeric")


DECODERS: dict[str, Callable[[bytes, int], Any]] = {
    JSON: _decode_json,
    CSV: _decode_csv,
    NPY: _decode_npy,
    NPZ: _decode_npz,
}


def decode(body: bytes, content_type: str | None, limit: int | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Decode a request body; a missing Content-Type is read as JSON.

    ``limit`` bounds the bytes the decoded arrays may take (default:
    ``Settings.max_decoded_bytes``); sizes are checked before allocating.
    """
    kind = media_type(content_type) or JSON
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise UnsupportedContentType(f"Content-Type {kind!r} is not supported; use one of {sorted(DECODERS)}")
    if limit is None:  # a loaded model passes its own: reading the environment costs more than decoding
        from torch_mme.settings import Settings

        limit = Settings.from_env().max_decoded_bytes
    return decoder(body, limit)


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
