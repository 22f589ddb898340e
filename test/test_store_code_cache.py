"""The store's cache of verified W+ codes (store/code_cache.py): same codes, no stale or erased ones.

Real store files and real SQLite connections throughout; the only internal peek is at the cache's
own arrays, to check that a removed code's buffer was overwritten with zeros (erasure in memory).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.store.base import StoreCorruptError
from latent_rag_ros.store.code_cache import CodeCache
from latent_rag_ros.store.crypto import generate_key_file
from latent_rag_ros.store.faiss_store import CACHED_READ_MAX, FaissStore

D, L, C = 16, 3, 8


def _store(root: Path, n: int = 400, **opts) -> tuple[FaissStore, np.ndarray]:
    rng = np.random.default_rng(5)
    s = FaissStore.create(root, D, L, C, **opts)
    w = rng.standard_normal((n, L, C)).astype(np.float32)
    s.add(rng.standard_normal((n, D)), w, [f"p{i % 7}" for i in range(n)])
    return s, w


def _warm(s: FaissStore, ids: list[int]) -> None:
    """Read ids twice: a code enters the cache on its second read (admission on the second read)."""
    s.get_latents(ids)
    s.get_latents(ids)


def test_cached_and_uncached_reads_return_the_same_codes(tmp_path: Path) -> None:
    s, w = _store(tmp_path / "s", latent_cache=8, latent_dtype="float16")
    w = w.astype(np.float16).astype(np.float32)  # what a float16 store gives back
    ids = np.array([3, 9, 3, 200, 9])
    first = s.get_latents(ids)  # misses: read from SQLite, digests checked, ids remembered
    assert s.stats()["latent_cache"]["codes"] == 0
    second = s.get_latents(ids)  # misses again: now copied into the cache
    third = s.get_latents(ids)  # hits
    for got in (first, second, third):
        np.testing.assert_array_equal(got, w[ids])
    st = s.stats()["latent_cache"]
    assert st["codes"] == 3 and st["hits"] == 5 and st["capacity"] == 8
    _warm(s, list(range(20)))  # more codes than the cache holds: the least recently used go
    assert s.stats()["latent_cache"]["codes"] == 8
    s.get_latents(np.arange(CACHED_READ_MAX + 1))  # bulk reads bypass the cache
    assert s.stats()["latent_cache"]["codes"] == 8
    s.close()
    off = FaissStore(tmp_path / "s", latent_cache=0)
    np.testing.assert_array_equal(off.get_latents(ids), w[ids])
    assert off.stats()["latent_cache"]["codes"] == 0
    off.close()
    with pytest.raises(ValueError, match="latent_cache"):
        FaissStore(tmp_path / "s", latent_cache=-1)


def test_remove_zeroes_the_cached_code_and_never_serves_it(tmp_path: Path) -> None:
    s, w = _store(tmp_path / "s")
    _warm(s, [5, 6])
    held = s._cache._codes[5]  # the cache's own buffer of entry 5 (peeked at to check erasure)
    assert np.array_equal(held, w[5].astype(held.dtype)) and held.any()
    s.remove([5])
    assert not held.any(), "the removed code is still in the cache's memory"
    assert 5 not in s._cache and 6 in s._cache
    with pytest.raises(ValueError, match="unknown or removed ids"):
        s.get_latents([5])
    gone = s.ids_with_label("p1")  # expire/label removal goes the same way
    _warm(s, gone[:4].tolist())
    buffers = [s._cache._codes[int(i)] for i in gone[:4]]
    s.remove(gone)
    assert not any(b.any() for b in buffers)
    kept = s._cache._codes[6]
    s.close()
    assert not kept.any() and len(s._cache) == 0  # closing zeroes every cached code


def test_read_only_view_does_not_serve_a_code_the_writer_removed(tmp_path: Path) -> None:
    s, w = _store(tmp_path / "s")
    ro = FaissStore(tmp_path / "s", read_only=True, verify="size")
    _warm(ro, [7, 8])
    np.testing.assert_array_equal(ro.get_latents([7, 8]), w[[7, 8]])  # served from the view's cache
    assert 7 in ro._cache
    s.remove([7])
    with pytest.raises(ValueError, match="removed since this read-only view was opened"):
        ro.get_latents([7])
    np.testing.assert_array_equal(ro.get_latents([8]), w[[8]])
    ro.close()
    s.close()


def test_a_row_changed_behind_the_store_is_checked_again(tmp_path: Path) -> None:
    s, w = _store(tmp_path / "s")
    _warm(s, [11])
    assert 11 in s._cache
    np.testing.assert_array_equal(s.get_latents([11]), w[[11]])
    con = sqlite3.connect(tmp_path / "s" / "store.sqlite", isolation_level=None)
    blob = bytearray(con.execute("SELECT w FROM latents WHERE id=11").fetchone()[0])
    blob[3] ^= 0x5A
    con.execute("UPDATE latents SET w=? WHERE id=11", (bytes(blob),))  # another connection commits
    con.close()
    with pytest.raises(StoreCorruptError, match="latents row 11"):
        s.get_latents([11])  # not served from the cache: the commit emptied it, the digest fails
    s.close()


def test_rekey_empties_the_cache_and_codes_still_read(tmp_path: Path) -> None:
    s, w = _store(tmp_path / "s")
    _warm(s, [1, 2])
    held = s._cache._codes[1]
    key = tmp_path / "k.key"
    generate_key_file(key)
    s.rekey(key)
    assert len(s._cache) == 0 and not held.any()
    np.testing.assert_array_equal(s.get_latents([1, 2]), w[[1, 2]])
    s.close()


def test_code_cache_lru_order_and_zeroing() -> None:
    c = CodeCache(2)
    a, b, d = (np.full(4, x, np.float16) for x in (1, 2, 3))
    c.put(1, a)
    assert 1 not in c  # first read: only the id is remembered
    c.put(1, a)
    c.put(2, b)
    c.put(2, b)
    assert c.get(1) is not None  # 1 is now the most recently used
    evicted = c._codes[2]
    c.put(3, d)
    c.put(3, d)
    assert 2 not in c and 1 in c and 3 in c
    assert c._codes[3] is evicted and np.array_equal(evicted, d), "the evicted buffer holds the new code"
    assert a.all(), "the caller's array is copied, never zeroed"
    assert c.get(2) is None and c.stats() == {"capacity": 2, "codes": 2, "hits": 1, "misses": 1}
