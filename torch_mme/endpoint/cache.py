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
from collections.abc import Callable

from torch_mme.endpoint.lru import LRU

log = logging.getLogger("torch_mme.endpoint.cache")


def folder_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class DiskCache:
    """Artifacts' sizes in least-recently-used order, with their total kept as they come and go.

    Every operation is O(1) but the choice of what to delete, which looks only
    at the oldest entries (and those ``keep`` protects on the way): a miss costs
    the same with ten artifacts on disk or ten thousand.
    """

    def __init__(self, root: str, budget_bytes: int) -> None:
        self.root = os.path.abspath(root)
        self.budget_bytes = budget_bytes
        self.entries: LRU[str, int] = LRU()
        self._used = 0
        os.makedirs(self.root, exist_ok=True)
        for name in sorted(os.listdir(self.root)):  # found from an earlier run: older than anything used since
            model_dir = self.model_dir(name)
            if os.path.isdir(model_dir) and not name.startswith("."):
                self.add(name, folder_size(model_dir))

    def model_dir(self, name: str) -> str:
        return os.path.join(self.root, name, "model")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def used_bytes(self) -> int:
        return self._used

    def touch(self, name: str) -> None:
        self.entries.touch(name)

    def add(self, name: str, size: int) -> None:
        self._used += size - (self.entries.get(name) or 0)
        self.entries.put(name, size)

    def _delete(self, name: str) -> int:
        size = self.entries.pop(name) or 0
        self._used -= size
        shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        return size

    def delete_least_recently_used(self, keep: Callable[[str], bool]) -> str | None:
        """Delete the least recently used artifact ``keep`` does not protect (the disk is full); None when none is."""
        name = self.entries.oldest(keep)
        if name is not None:
            self._delete(name)
        return name

    def make_room(self, incoming: int, keep: Callable[[str], bool]) -> list[str]:
        """Delete least-recently-used artifacts (those ``keep`` does not protect) until ``incoming`` more fit."""
        excess = self._used + incoming - self.budget_bytes
        victims: list[str] = []
        for name in self.entries:  # chosen first, deleted after: the order may not change while it is read
            if excess <= 0:
                break
            if not keep(name):
                victims.append(name)
                excess -= self.entries[name]
        for name in victims:
            size = self._delete(name)
            log.info(
                "deleted cached artifact %s (%.1f MB) to stay within %.0f MB",
                name,
                size / 2**20,
                self.budget_bytes / 2**20,
            )
        return victims
