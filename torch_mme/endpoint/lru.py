"""Least-recently-used order, kept as it happens: the one choice of "what to drop first" for the endpoint.

The router (which loaded model to unload on a 507) and the disk cache (which
extracted artifact to delete) both ask the same question; an ``OrderedDict``
answers it in O(1) per use and O(skipped) per choice, where sorting every
entry by a timestamp was O(n log n) in the models the endpoint has seen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Keys with their values, iterated least recently used first; ``put`` and ``touch`` make a key the most recent."""

    def __init__(self) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        """Least recently used first (do not add or remove keys while iterating)."""
        return iter(self._items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value, without making it more recent."""
        return self._items.get(key, default)

    def put(self, key: K, value: V) -> None:
        """Add or replace ``key``; it becomes the most recently used."""
        self._items[key] = value
        self._items.move_to_end(key)

    def touch(self, key: K) -> None:
        """``key`` was just used; a key not held is ignored (it was dropped meanwhile)."""
        if key in self._items:
            self._items.move_to_end(key)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def items(self) -> Iterator[tuple[K, V]]:
        """Least recently used first."""
        return iter(self._items.items())

    def values(self) -> Iterator[V]:
        return iter(self._items.values())

    def oldest(self, keep: Callable[[K], bool] = lambda key: False) -> K | None:
        """The least recently used key that ``keep`` does not protect; None when every key is protected."""
        return next((key for key in self._items if not keep(key)), None)
