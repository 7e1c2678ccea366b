"""Helpers the tests share, and what a benchmark reuses from them (bench may import tests.support; tests never
import bench)."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
