"""Memory the container may still use, and memory a model will take, without loading it.

Imported by the front-end process before a LoadModel reaches a worker, and by
the worker for its GPU check, so it must stay light: the standard library
only, never torch. Reading a model's footprint opens zip directories and
safetensors headers, never tensor data. ``estimate`` is the one estimate both
admit by.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
from dataclasses import dataclass

from handler import model_config
from torch_mme.common import format_size, is_inside

MIB = 2**20
NO_LIMIT_V1 = 2**60
"""cgroup v1 has no "max": an unlimited group reports about 2**63 rounded down to a page."""
CODE_DIR = "code"
ZIP_MAGIC = b"PK\x03\x04"
TORCH_ZIP_SUFFIXES = (".pt", ".pth", ".pt2", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
MAX_SAFETENSORS_HEADER = 100 * MIB
LOAD_FACTOR = 1.2
"""Weights are held once, plus transient copies while they load."""
DETAIL_FILES = 4
"""Largest files named in ``Footprint.detail``; the rest are only counted."""

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "C64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

# A corrupt artifact must give a conservative estimate, never an exception, so
# everything zipfile and struct raise on bad input is caught where files are read.
_UNREADABLE = (OSError, ValueError, EOFError, OverflowError, NotImplementedError, struct.error, zipfile.BadZipFile)


# --------------------------------------------------------------------------- memory available


@dataclass(frozen=True)
class MemoryReading:
    """What the container may use in all, and how much of it is taken."""

    limit_bytes: int
    """The cgroup limit, or the host's MemTotal when there is none (never more than MemTotal)."""
    used_bytes: int
    """Memory the container cannot have now: its own use (less reclaimable page cache), raised
    so that ``available_bytes`` never exceeds the host's MemAvailable."""
    source: str
    """``"cgroup v2"``, ``"cgroup v1"`` or ``"host"``."""

    @property
    def available_bytes(self) -> int:
        return max(0, self.limit_bytes - self.used_bytes)


@dataclass(frozen=True)
class _Host:
    total: int
    available: int


def read_memory(cgroup_root: str = "/sys/fs/cgroup", meminfo: str = "/proc/meminfo") -> MemoryReading:
    """The container's memory limit and use: cgroup v2, else cgroup v1, else the host.

    cgroup v2 reads ``memory.max`` and ``memory.current`` at ``cgroup_root``;
    cgroup v1 reads ``memory/memory.limit_in_bytes`` and ``memory/memory.usage_in_bytes``.
    Both subtract the inactive page cache (``inactive_file``, or ``total_inactive_file``
    on v1) from the use, as docker and the kubelet do: the kernel reclaims it before
    an OOM kill, and downloading model artifacts fills it. A limit of ``max`` (v2),
    or a v1 value of 2**60 and more or above MemTotal, means no limit: the host's
    MemTotal and MemAvailable from ``meminfo`` are used. A cgroup limit never exceeds
    MemTotal, and what is available never exceeds MemAvailable: a limit the host
    cannot honour does not make memory.

    Raises ``OSError`` when neither a cgroup limit nor ``meminfo`` can be read.
    """
    host = _read_meminfo(meminfo)
    cgroup = _read_cgroup_v2(cgroup_root) or _read_cgroup_v1(cgroup_root, host)
    if cgroup is None:
        if host is None:
            raise OSError(f"no cgroup memory limit under {cgroup_root} and {meminfo} is unreadable")
        return MemoryReading(host.total, host.total - host.available, "host")
    limit, used, source = cgroup
    if host is not None:
        limit = min(limit, host.total)
        used = max(used, limit - host.available)
    return MemoryReading(limit, used, source)


def _read_cgroup_v2(root: str) -> tuple[int, int, str] | None:
    limit = _read_text(os.path.join(root, "memory.max"))
    current = _read_int(os.path.join(root, "memory.current"))
    if limit is None or current is None or limit == "max":
        return None
    try:
        limit_bytes = int(limit)
    except ValueError:
        return None
    inactive = _read_stat(os.path.join(root, "memory.stat"), ("inactive_file",))
    return limit_bytes, max(0, current - inactive), "cgroup v2"


def _read_cgroup_v1(root: str, host: _Host | None) -> tuple[int, int, str] | None:
    folder = os.path.join(root, "memory")
    limit = _read_int(os.path.join(folder, "memory.limit_in_bytes"))
    usage = _read_int(os.path.join(folder, "memory.usage_in_bytes"))
    if limit is None or usage is None or limit >= NO_LIMIT_V1 or (host is not None and limit > host.total):
        return None
    inactive = _read_stat(os.path.join(folder, "memory.stat"), ("total_inactive_file", "inactive_file"))
    return limit, max(0, usage - inactive), "cgroup v1"


def _read_meminfo(path: str) -> _Host | None:
    """MemTotal and MemAvailable in bytes (MemFree + Buffers + Cached before Linux 3.14)."""
    text = _read_text(path)
    if text is None:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            number = int(parts[0])
        except ValueError:
            continue
        values[name.strip()] = number * 1024 if parts[1:2] == ["kB"] else number
    if "MemTotal" not in values:
        return None
    available = values.get("MemAvailable")
    if available is None:
        available = sum(values.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    return _Host(values["MemTotal"], min(available, values["MemTotal"]))


def _read_stat(path: str, keys: tuple[str, ...]) -> int:
    """The first of ``keys`` found in a cgroup ``memory.stat``, or 0."""
    text = _read_text(path) or ""
    found: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in keys and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return next((found[k] for k in keys if k in found), 0)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- model footprint


@dataclass(frozen=True)
class Footprint:
    """What a model directory will take in memory once loaded, estimated from its files."""

    weights_bytes: int
    """Bytes of tensors found in the artifact files (file sizes where tensors cannot be told apart)."""
    detail: str
    """One line for logs: what was counted."""


@dataclass(frozen=True)
class _Counted:
    name: str
    size: int
    tensors: int | None
    kind: str

    def describe(self) -> str:
        count = "" if self.tensors is None else f"{self.tensors} tensor{'' if self.tensors == 1 else 's'}, "
        return f"{self.name}: {count}{format_size(self.size)} ({self.kind})"


@dataclass(frozen=True)
class Estimate:
    bytes: int
    detail: str
    """One line for logs: what was counted, and what ``torch-mme.json`` declares."""


def estimate(model_dir: str, memory_mb: float | None = None, overhead_bytes: int = 0) -> Estimate:
    """What one worker of the model will hold: ``memory_mb`` when the model's ``torch-mme.json`` declares it (the
    owner's word wins), else ``overhead_bytes`` (the process itself) plus its weights times ``LOAD_FACTOR``.
    The detail names the files counted either way."""
    footprint = estimate_weights(model_dir)
    if memory_mb:
        return Estimate(
            math.ceil(memory_mb * MIB), f"{footprint.detail}; {model_config.FILE} declares {memory_mb:g} MiB"
        )
    return Estimate(overhead_bytes + int(footprint.weights_bytes * LOAD_FACTOR), footprint.detail)


def estimate_weights(model_dir: str) -> Footprint:
    """Bytes of tensors the files of ``model_dir`` hold, read from metadata only.

    Torch zip archives (TorchScript, ``torch.save`` since torch 1.6, ``torch.export``
    ``.pt2``) count the uncompressed size of their storage entries; ``.safetensors``
    files count shape times dtype size from their header; anything else, legacy
    pickles included, counts its file size. ``code/`` is the user's scripts, not
    weights, and is skipped; links leading outside ``model_dir`` are not followed,
    and a file reached through several links is counted once.
    """
    root = os.path.realpath(model_dir)
    if not os.path.isdir(root):
        return Footprint(0, f"{model_dir}: not a directory")
    counted: list[_Counted] = []
    skipped = 0
    seen: set[str] = set()
    for folder, dirnames, filenames in os.walk(root):
        if folder == root and CODE_DIR in dirnames:
            dirnames.remove(CODE_DIR)
        dirnames.sort()
        for filename in sorted(filenames):
            path = os.path.join(folder, filename)
            name = os.path.relpath(path, root).replace(os.sep, "/")
            if name == model_config.FILE:
                continue
            real = os.path.realpath(path)
            if not is_inside(real, root):
                skipped += 1
                continue
            if real in seen or not _is_regular_file(real):
                continue
            seen.add(real)
            counted.append(_count_file(real, name))
    total = sum(c.size for c in counted)
    return Footprint(total, _detail(counted, total, skipped))


def _count_file(path: str, name: str) -> _Counted:
    lower = name.lower()
    if lower.endswith(SAFETENSORS_SUFFIX):
        found = _safetensors_bytes(path)
        if found is not None:
            return _Counted(name, found[0], found[1], "safetensors")
        return _Counted(name, _file_size(path), None, "bad safetensors header, file size")
    if lower.endswith(TORCH_ZIP_SUFFIXES):
        if _starts_with(path, ZIP_MAGIC):
            found_zip = _torch_zip_bytes(path)
            if found_zip is not None:
                size, storages, kind = found_zip
                # An AOTInductor package's entries are a shared library and its sources, not tensors.
                return _Counted(name, size, None if kind == "AOTInductor" else storages, kind)
            return _Counted(name, _file_size(path), None, "unreadable zip, file size")
        return _Counted(name, _file_size(path), None, "legacy pickle, file size")
    return _Counted(name, _file_size(path), None, "file size")


def _torch_zip_bytes(path: str) -> tuple[int, int, str] | None:
    """(bytes, entries, kind) of the tensor entries of a torch zip archive, from its directory only.

    Every entry sits under one top folder, ``<archive>/``. Tensor bytes are, in torch 2.13:
      - ``torch.save`` and TorchScript: one entry per storage, ``data/<key>``;
      - frozen TorchScript (``torch.jit.freeze``): ``constants/<key>``;
      - ``torch.export.save``: ``data/weights/weight_<n>`` (parameters and buffers, a tied
        weight once) and ``data/constants/tensor_<n>``, beside ``.json`` configs, which are
        not tensors, and ``data/sample_inputs/``, the example inputs, which are not loaded;
      - AOTInductor packages: the compiled ``data/aotinductor/<model>/*.so`` holds the weights,
        and is counted whole with its sources.
    An archive with none of these is counted by its file size: an unknown layout must not read as empty.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except _UNREADABLE:
        return None
    size = count = 0
    folders: set[str] = set()
    for entry in entries:
        rel = entry.filename.partition("/")[2]
        folders.add(rel.partition("/")[0])
        if rel.startswith("data/aotinductor/"):
            folders.add("aotinductor")
        if entry.is_dir() or not _is_tensor_entry(rel):
            continue
        size += entry.file_size
        count += 1
    if count == 0:
        return None
    if "archive_format" in folders:
        kind = "AOTInductor" if "aotinductor" in folders else "torch.export"
    elif "code" in folders:
        kind = "TorchScript"
    else:
        kind = "torch.save"
    return size, count, kind


def _is_tensor_entry(rel: str) -> bool:
    if rel.startswith("constants/"):
        return True
    if not rel.startswith("data/") or rel.endswith(".json"):
        return False
    return not rel.startswith("data/sample_inputs/")


def _safetensors_bytes(path: str) -> tuple[int, int] | None:
    """(bytes, tensors) from a safetensors header, or None when the header does not add up."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_SAFETENSORS_HEADER or 8 + length > file_size:
                return None
            header = json.loads(f.read(length).decode("utf-8"))
    except _UNREADABLE:
        return None
    if not isinstance(header, dict):
        return None
    total = count = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        size = _safetensors_tensor_bytes(info)
        if size is None:
            return None
        total += size
        count += 1
    # A header promising more than the file holds is lying; the file size is then the better guess.
    return (total, count) if total <= file_size - 8 - length else None


def _safetensors_tensor_bytes(info: object) -> int | None:
    if not isinstance(info, dict):
        return None
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    dtype = info.get("dtype")
    itemsize = SAFETENSORS_DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
    if itemsize is not None:
        return math.prod(shape) * itemsize
    # A dtype newer than this table (e.g. packed 4-bit floats): its byte range says the size.
    offsets = info.get("data_offsets")
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
        begin, end = offsets
        if 0 <= begin <= end:
            return end - begin
    return None


def _detail(counted: list[_Counted], total: int, skipped: int) -> str:
    largest = sorted(counted, key=lambda c: c.size, reverse=True)[:DETAIL_FILES]
    parts = [c.describe() for c in largest]
    if len(counted) > len(largest):
        parts.append(f"{len(counted) - len(largest)} more, {format_size(total - sum(c.size for c in largest))}")
    parts.append(f"total {format_size(total)} in {len(counted)} file{'' if len(counted) == 1 else 's'}")
    if skipped:
        parts.append(f"{skipped} link{'' if skipped == 1 else 's'} outside the model dir skipped")
    return "; ".join(parts)


def _is_regular_file(path: str) -> bool:
    """False for FIFOs and devices too: opening a FIFO would block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
