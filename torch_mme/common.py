"""Small helpers every room shares: the handler in each model process too, so the standard library only."""

from __future__ import annotations

import os


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
