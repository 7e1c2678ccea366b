"""The disk cache of extracted artifacts: ``<models root>/<name>/model``, within a byte budget.

SageMaker keeps unloaded models' artifacts on disk and deletes the least
recently used ones when the disk fills; so does this cache. A folder found at
start-up (from an earlier run) is reused. Models loaded in the container, or
being fetched, are never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("torch_mme.endpoint.cache")


@dataclass
class Entry:
    size: int
    last_used: float = field(default_factory=time.monotonic)


def folder_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class DiskCache:
    def __init__(self, root: str, budget_bytes: int) -> None:
        self.root = os.path.abspath(root)
        self.budget_bytes = budget_bytes
        self.entries: dict[str, Entry] = {}
        os.makedirs(self.root, exist_ok=True)
        for name in sorted(os.listdir(self.root)):
            model_dir = self.model_dir(name)
            if os.path.isdir(model_dir) and not name.startswith("."):
                self.entries[name] = Entry(folder_size(model_dir), last_used=0.0)

    def model_dir(self, name: str) -> str:
        return os.path.join(self.root, name, "model")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def touch(self, name: str) -> None:
        if name in self.entries:
            self.entries[name].last_used = time.monotonic()

    def add(self, name: str, size: int) -> None:
        self.entries[name] = Entry(size)

    def delete_least_recently_used(self, keep: Callable[[str], bool]) -> str | None:
        """Delete the least recently used artifact ``keep`` does not protect (the disk is full); None when none is."""
        for name in sorted(self.entries, key=lambda n: self.entries[n].last_used):
            if not keep(name):
                self.entries.pop(name)
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                return name
        return None

    def make_room(self, incoming: int, keep: Callable[[str], bool]) -> list[str]:
        """Delete least-recently-used artifacts (those ``keep`` does not protect) until ``incoming`` more fit."""
        deleted = []
        for name in sorted(self.entries, key=lambda n: self.entries[n].last_used):
            if self.used_bytes() + incoming <= self.budget_bytes:
                break
            if keep(name):
                continue
            size = self.entries.pop(name).size
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            deleted.append(name)
            log.info(
                "deleted cached artifact %s (%.1f MB) to stay within %.0f MB",
                name,
                size / 2**20,
                self.budget_bytes / 2**20,
            )
        return deleted
