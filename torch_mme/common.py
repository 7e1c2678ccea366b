"""Small helpers every room shares: the handler in each model process too, so the standard library only."""

from __future__ import annotations

import os
import stat


def is_inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it, as the paths are written (normalised, not resolved): pass real
    paths (``os.path.realpath``) wherever a link could lead out. An absolute path is never inside a relative
    root, nor the other way round."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def format_size(size: float) -> str:
    """Bytes for people, in binary units with one decimal: ``512 B``, ``3.8 MiB``, ``1.2 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def read_regular_file(path: str, limit: int = 2**20) -> bytes:
    """A regular file's first ``limit`` bytes, never blocking and never following a link: for files in places
    where a model's own code could put a FIFO (an open would wait for a writer) or a link to a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)
