"""Zipf request streams over model indices, and what an ideal LRU of a given capacity would hit on them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np


def zipf_stream(models: int, requests: int, exponent: float, seed: int) -> list[int]:
    """``requests`` model indices: rank r (1..models) drawn with p ∝ 1/r^exponent, ranks mapped to models by a
    permutation (so the popular models are not the first indices)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1) ** exponent
    model_of_rank = rng.permutation(models)
    ranks = rng.choice(models, size=requests, p=weights / weights.sum())
    return [int(model_of_rank[r]) for r in ranks]


def lru_hits(stream: Sequence[Hashable], capacity: int) -> list[bool]:
    """Per request, whether an ideal LRU cache of ``capacity`` entries already held it."""
    cache: OrderedDict[Hashable, None] = OrderedDict()
    hits = []
    for key in stream:
        hits.append(key in cache)
        cache[key] = None
        cache.move_to_end(key)
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits
