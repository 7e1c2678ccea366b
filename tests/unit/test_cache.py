"""The endpoint's disk cache of extracted artifacts, and the LRU order it shares with the router."""

from __future__ import annotations

from pathlib import Path

from torch_mme.endpoint.cache import DiskCache
from torch_mme.endpoint.lru import LRU


def extracted(cache: DiskCache, name: str, size: int) -> None:
    """An artifact of ``size`` bytes extracted as the router does it, then added."""
    model_dir = Path(cache.model_dir(name))
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(b"w" * size)
    cache.add(name, size)


def test_lru_order_follows_use_and_oldest_skips_what_is_kept():
    lru: LRU[str, int] = LRU()
    for key in "abc":
        lru.put(key, ord(key))
    lru.touch("a")
    lru.touch("gone")  # dropped meanwhile: ignored
    assert list(lru) == ["b", "c", "a"]
    assert lru.oldest() == "b"
    assert lru.oldest(keep=lambda key: key in "bc") == "a"
    assert lru.oldest(keep=lambda key: True) is None
    lru.put("b", 0)  # replaced: the most recent now
    assert list(lru.items()) == [("c", 99), ("a", 97), ("b", 0)]
    assert lru.pop("c") == 99 and "c" not in lru and len(lru) == 2


def test_make_room_deletes_least_recently_used_unprotected_artifacts_until_the_incoming_one_fits(tmp_path):
    cache = DiskCache(str(tmp_path), budget_bytes=300)
    for name in ("a", "b", "c"):
        extracted(cache, name, 100)
    cache.touch("a")  # order now b, c, a
    assert cache.used_bytes() == 300
    assert cache.make_room(150, keep=lambda name: name == "b") == ["c", "a"]
    assert list(cache.entries) == ["b"] and cache.used_bytes() == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert cache.make_room(200, keep=lambda name: False) == []  # fits already


def test_make_room_deletes_what_it_can_when_everything_else_is_protected(tmp_path):
    cache = DiskCache(str(tmp_path), budget_bytes=200)
    for name in ("a", "b"):
        extracted(cache, name, 100)
    assert cache.make_room(500, keep=lambda name: name == "b") == ["a"]
    assert cache.used_bytes() == 100


def test_delete_least_recently_used_and_readding_keep_the_total(tmp_path):
    cache = DiskCache(str(tmp_path), budget_bytes=10**6)
    extracted(cache, "a", 10)
    extracted(cache, "b", 20)
    cache.add("a", 30)  # extracted again, bigger: replaces, most recent
    assert cache.used_bytes() == 50
    assert cache.delete_least_recently_used(keep=lambda name: False) == "b"
    assert cache.used_bytes() == 30 and not (tmp_path / "b").exists()
    assert cache.delete_least_recently_used(keep=lambda name: True) is None


def test_artifacts_from_an_earlier_run_are_reused_and_are_older_than_anything_used_since(tmp_path):
    first = DiskCache(str(tmp_path), budget_bytes=10**6)
    for name in ("y", "x"):
        extracted(first, name, 7)
    (tmp_path / ".x.tar.gz").write_bytes(b"partial download")  # not an artifact
    again = DiskCache(str(tmp_path), budget_bytes=10**6)
    assert list(again.entries) == ["x", "y"] and again.used_bytes() == 14
    extracted(again, "z", 1)
    again.touch("x")
    assert list(again.entries) == ["y", "z", "x"]
