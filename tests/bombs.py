"""Request bodies that are small on the wire and enormous once decoded, for the decoder limits' tests.

Built without holding (or compressing) the decoded bytes: one 16 MiB block of
zeros is deflated once, ending with a full flush so that it refers to nothing
before it, and repeated; the zip around it is written by hand.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

GiB = 2**30
_BLOCK = 2**24


def npz_bomb(decoded_bytes: int = GiB, name: str = "x.npy") -> bytes:
    """A valid ``.npz`` whose one float32 member really decompresses to ``decoded_bytes`` (< 4 GiB) of zeros."""
    assert decoded_bytes % _BLOCK == 0 and decoded_bytes < 4 * GiB
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (decoded_bytes // 4,)}
    )
    head = header.getvalue()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(_BLOCK)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = decoded_bytes // _BLOCK
    data = first + block * count + compressor.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return _zip_one(name.encode(), data, crc, len(head) + decoded_bytes)


def npz_declaring(shape: tuple[int, ...], name: str = "x.npy") -> bytes:
    """A ``.npz`` whose member's header declares ``shape`` float32 but holds no data (a few hundred bytes)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    head = header.getvalue()
    return _zip_one(name.encode(), head, zlib.crc32(head), len(head), method=0)


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` whose header declares ``shape`` float32, followed by 16 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return header.getvalue() + bytes(16)


def _zip_one(name: bytes, data: bytes, crc: int, size: int, method: int = 8) -> bytes:
    """A zip archive of one member (``method`` 8: deflated, 0: stored) whose directory declares ``size``."""
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(name), 0) + name
    central = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0
        )
        + name
    )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end
