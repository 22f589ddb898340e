"""Embedded FAISS store: round trips, exactness against numpy, HNSW recall, compaction, bad inputs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.core.retrieval import retrieve
from latent_rag_ros.store import StoreError, StoreMismatchError, StoreNotFoundError, open_store
from latent_rag_ros.store.bench import clustered_vectors, identity_queries
from latent_rag_ros.store.faiss_store import FaissStore

D, L, C = 32, 4, 8


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, D)).astype(np.float32)
    w = rng.standard_normal((n, L, C)).astype(np.float32)
    return v, w, [f"p{i % 7}" for i in range(n)]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)


def _brute(store_vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = _unit(q) @ store_vecs.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


@pytest.fixture()
def store(tmp_path: Path):
    s = open_store(tmp_path / "s", create=True, dim=D, num_ws=L, w_dim=C, built_with={"generator": "g:1"})
    yield s
    s.close()


def test_add_search_get_remove_round_trip(store: FaissStore, tmp_path: Path) -> None:
    v, w, labels = _data(300)
    names = [f"img{i}.jpg" for i in range(300)]
    ids = store.add(v, w, labels, names)
    assert ids.dtype == np.int64 and ids.tolist() == list(range(300)) and len(store) == 300
    np.testing.assert_array_equal(store.get_latents(ids[[5, 2, 299]]), w[[5, 2, 299]])
    np.testing.assert_allclose(store.get_vectors(ids[:4]), _unit(v[:4]), atol=1e-6)
    assert store.get_labels([3, 10]) == [labels[3], labels[10]]
    assert store.get_names([7]) == ["img7.jpg"] and "img299.jpg" in store.names()
    v0 = store.version

    # exact search equals brute force, scores and order
    q = np.random.default_rng(5).standard_normal((6, D)).astype(np.float32)
    scores, got = store.search(q, 15)
    ref_s, ref_i = _brute(_unit(v), ids, q, 15)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)

    gone = ids[np.argsort(-(_unit(v) @ _unit(q[:1]).T)[:, 0])[:5]]  # the 5 best hits of query 0
    store.remove(gone)
    assert len(store) == 295 and store.version != v0
    _, got = store.search(q, 300)
    assert not set(gone.tolist()) & set(got.ravel().tolist())
    assert (got[:, :295] >= 0).all() and (got[:, 295:] == -1).all()  # k up to len(store), padded after
    with pytest.raises(ValueError, match="unknown or removed"):
        store.get_latents(gone[:1])
    with pytest.raises(ValueError, match="already in the store"):
        store.add(v[:1], w[:1], names=["img8.jpg"])
    # a removed name may be used again
    extra = np.random.default_rng(77).standard_normal((1, D)).astype(np.float32)
    again = store.add(extra, w[:1], names=[names[int(gone[0])]])
    assert again.tolist() == [300]

    # everything survives close/reopen (from SQLite), then compaction, then reopen
    keep = np.setdiff1d(ids, gone)
    store.close()
    for step in ("replay", "compact", "snapshot"):
        s2 = open_store(tmp_path / "s")
        if step == "compact":
            s2.compact()
        assert len(s2) == 296, step
        np.testing.assert_array_equal(s2.get_latents(keep), w[keep], err_msg=step)
        assert s2.get_labels(keep[:3]) == [labels[i] for i in keep[:3]]
        _, got2 = s2.search(q, 10)
        ref = _brute(_unit(np.concatenate([v[keep], extra])), np.concatenate([keep, [300]]), q, 10)[1]
        np.testing.assert_array_equal(got2, ref, err_msg=step)
        assert s2.verify()["ok"], step
        s2.close()


def test_search_pads_when_store_is_small_and_empty(tmp_path: Path) -> None:
    s = open_store(tmp_path / "e", create=True, dim=D, num_ws=L, w_dim=C)
    scores, ids = s.search(np.ones((2, D), np.float32), 3)
    assert (ids == -1).all() and np.isinf(scores).all() and (scores < 0).all()
    v, w, _ = _data(2)
    s.add(v, w)
    scores, ids = s.search(v[:1], 5)
    assert ids[0].tolist() == [0, 1, -1, -1, -1] and np.isinf(scores[0, 2:]).all()
    assert math.isclose(float(scores[0, 0]), 1.0, abs_tol=1e-6)
    s.close()


def test_invalid_inputs_raise_value_error_and_lose_nothing(store: FaissStore) -> None:
    v, w, labels = _data(10)
    store.add(v, w, labels)
    before = store.version
    bad_v = v[:2].copy()
    bad_v[1, 3] = np.nan
    inf_w = w[:2].copy()
    inf_w[0, 0, 0] = np.inf
    cases = [
        (lambda: store.add(v[:2, :-1], w[:2]), "shape"),
        (lambda: store.add(bad_v, w[:2]), "NaN"),
        (lambda: store.add(v[:2], inf_w), "NaN or inf"),
        (lambda: store.add(v[:2], w[:2, :, :-1]), "latents"),
        (lambda: store.add(v[:2], w[:3]), "latents"),
        (lambda: store.add(np.zeros((1, D)), w[:1]), "zero norm"),
        (lambda: store.add(v[:2], w[:2], ["a"]), "labels"),
        (lambda: store.add(v[:2], w[:2], names=["x", "x"]), "twice"),
        (lambda: store.search(v[:1], 0), "k must"),
        (lambda: store.search(v[:1], -3), "k must"),
        (lambda: store.search(v[:1, :5], 3), "shape"),
        (lambda: store.search(np.full((1, D), np.inf), 3), "NaN"),
        (lambda: store.remove([3, 999]), "unknown"),
        (lambda: store.get_latents([-1]), "unknown"),
    ]
    for fn, needle in cases:
        with pytest.raises(ValueError, match=needle):
            fn()
    assert len(store) == 10 and store.version == before
    np.testing.assert_array_equal(store.get_latents(np.arange(10)), w)  # id 3 was not removed by the bad call


def test_float16_latents_are_rounded_and_range_checked(tmp_path: Path) -> None:
    s = open_store(tmp_path / "h", create=True, dim=D, num_ws=L, w_dim=C, latent_dtype="float16")
    v, w, _ = _data(20)
    ids = s.add(v, w * 3)
    got = s.get_latents(ids)
    np.testing.assert_array_equal(got, (w * 3).astype(np.float16).astype(np.float32))
    assert np.abs(got - w * 3).max() <= np.abs(w * 3).max() * 2**-11
    with pytest.raises(ValueError, match="float16 range"):
        s.add(v[:1], np.full((1, L, C), 1e5, np.float32))
    s.compact()
    s.close()
    s = open_store(tmp_path / "h")
    np.testing.assert_array_equal(s.get_latents(ids), got)
    assert s.stats()["latent_dtype"] == "float16"
    s.close()


def test_hnsw_recall_on_clustered_data(tmp_path: Path) -> None:
    n, dim = 20_000, 64
    data, centres = clustered_vectors(n, dim, per_identity=20, spread=1.0, seed=3)
    s = FaissStore.create(tmp_path / "ann", dim, 1, 4, index={"exact_max": 5000})
    s.add(data, np.zeros((n, 1, 4), np.float32))
    st = s.stats()["index"]
    assert st["kind"] == "hnsw" and st["ef_search"] > 0
    q = identity_queries(centres, 300, spread=1.0, seed=9)
    _, got = s.search(q, 10)
    truth = np.argsort(-(q @ data.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
    assert recall >= 0.95, recall
    # k above approx_max_k and the removed-entry filter go through the exact path
    s.remove(truth[0, :3])
    _, got = s.search(q[:1], 500)
    ref = [i for i in np.argsort(-(q[0] @ data.T)).tolist() if i not in set(truth[0, :3].tolist())][:500]
    assert got[0].tolist() == ref
    _, got = s.search(q[:1], 10)
    assert not set(truth[0, :3].tolist()) & set(got[0].tolist())
    # the graph is saved with a checksum and reloaded (not rebuilt) on open
    s.compact()
    s.close()
    s = FaissStore(tmp_path / "ann")
    assert s.stats()["index"]["kind"] == "hnsw"
    _, got2 = s.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got2.tolist(), truth.tolist())]) >= 0.95
    s.close()


def test_purge_renumbers_slots_but_keeps_ids(store: FaissStore, tmp_path: Path) -> None:
    v, w, labels = _data(100)
    ids = store.add(v, w, labels, [f"n{i}" for i in range(100)])
    store.purge_fraction = 1.0  # no automatic purge: removed slots wait for compact(purge=True)
    store.remove(ids[::2])
    assert store.stats()["removed_pending_purge"] == 50
    summary = store.compact(purge=True)
    assert summary["purged"] == 50 and store.stats()["slots"] == 50
    np.testing.assert_array_equal(store.get_latents(ids[1::2]), w[1::2])
    assert store.names() == {f"n{i}" for i in range(1, 100, 2)}
    new = store.add(v[:1], w[:1])
    assert new.tolist() == [100]  # ids are never reused
    _, got = store.search(v, 1)
    np.testing.assert_array_equal(got[1::2, 0], ids[1::2])


def test_snapshot_catch_up_and_stale_snapshot(tmp_path: Path) -> None:
    n, dim = 6000, 16
    data, _ = clustered_vectors(n + 300, dim, seed=4)
    s = FaissStore.create(tmp_path / "c", dim, 1, 2, index={"exact_max": 1000}, snapshot_min=1 << 30)
    s.add(data[:n], np.zeros((n, 1, 2), np.float32))
    s.compact()  # snapshot of n slots
    assert s.stats()["snapshot_slots"] == n
    s.add(data[n:], np.zeros((300, 1, 2), np.float32))  # after the snapshot: caught up from SQLite on open
    s.remove([5, n + 7])
    s.close()
    s = FaissStore(tmp_path / "c")
    assert len(s) == n + 298 and s.stats()["index"]["kind"] == "hnsw"
    _, got = s.search(data[[10, n + 10]], 1)
    assert got[:, 0].tolist() == [10, n + 10]
    with pytest.raises(ValueError, match="unknown or removed"):
        s.get_vectors([5])
    assert s.verify()["ok"]
    s.close()
    # a snapshot from another store is not used: the index is rebuilt from SQLite
    other = FaissStore.create(tmp_path / "o", dim, 1, 2, index={"exact_max": 1000})
    other.add(data[:2000], np.zeros((2000, 1, 2), np.float32))
    other.compact()
    other.close()
    (tmp_path / "c" / "index.snap").write_bytes((tmp_path / "o" / "index.snap").read_bytes())
    s = FaissStore(tmp_path / "c")
    assert len(s) == n + 298
    _, got = s.search(data[[10, n + 10]], 1)
    assert got[:, 0].tolist() == [10, n + 10]
    s.close()


def test_retrieve_over_the_store_excludes_and_overfetches(store: FaissStore) -> None:
    v, w, labels = _data(40)
    ids = store.add(v, w, labels)
    got = retrieve(store, v[:3], m=10, exclude_ids=[int(ids[0]), None, None], exclude_labels=[None, labels[1], None])
    for b in range(3):
        assert ids[b] not in got.ids[b]  # own entry: by id, label and duplicate guard
        np.testing.assert_array_equal(got.latents[b], store.get_latents(got.ids[b]))
    assert not {labels[int(i)] for i in got.ids[1]} & {labels[1]}
    assert got.version == store.version


def test_open_errors_mismatch_and_single_writer(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no store"):
        open_store(tmp_path / "missing")
    s = open_store(tmp_path / "m", create=True, dim=D, num_ws=L, w_dim=C,
                   built_with={"generator": "sg3:abc", "reid": "osnet"})
    s.add(*_data(3)[:2])
    with pytest.raises(StoreError, match="open for writing"):
        open_store(tmp_path / "m")
    ro = open_store(tmp_path / "m", read_only=True)  # readers need no lock
    assert len(ro) == 3
    with pytest.raises(StoreError, match="read-only"):
        ro.add(*_data(1)[:2])
    ro.close()
    s.close()
    for kwargs, needle in [
        ({"num_ws": L + 1, "w_dim": C}, "W\\+ shape"),
        ({"num_ws": L, "w_dim": 2 * C}, "W\\+ shape"),
        ({"dim": D + 1}, "identity dim"),
        ({"built_with": {"generator": "sg3:other"}}, "generator"),
        ({"built_with": {"latent_encoder": "e4e:1"}}, "no record of 'latent_encoder'"),
    ]:
        with pytest.raises(StoreMismatchError, match=needle):
            open_store(tmp_path / "m", **kwargs)
    # the matching expectation opens (and the failed opens released the lock)
    open_store(tmp_path / "m", create=True, dim=D, num_ws=L, w_dim=C, built_with={"reid": "osnet"}).close()
    with pytest.raises(TypeError, match="compact_wal_bytes"):  # an option of the old format: nothing written
        FaissStore.create(tmp_path / "typo", D, L, C, compact_wal_bytes=1)
    assert not (tmp_path / "typo" / "store.sqlite").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not empty"):
        open_store(tmp_path / "junk", create=True, dim=D, num_ws=L, w_dim=C)


def test_readers_open_consistently_while_a_writer_adds(tmp_path: Path) -> None:
    import threading

    w_store = open_store(tmp_path / "rw", create=True, dim=D, num_ws=L, w_dim=C)
    v, w, _ = _data(400)
    acked = [0]
    stop = threading.Event()

    def writer() -> None:
        for i in range(0, 400, 4):
            if stop.is_set():
                return
            w_store.add(v[i: i + 4], w[i: i + 4])
            if i % 40 == 0:
                w_store.remove([i])
            acked[0] = i + 4

    t = threading.Thread(target=writer)
    t.start()
    opened = 0
    try:
        while t.is_alive():
            before = acked[0]
            r = open_store(tmp_path / "rw", read_only=True)
            assert int(r.ids()[-1]) + 1 >= before if len(r) else before == 0
            ids = r.ids()
            try:
                np.testing.assert_array_equal(r.get_latents(ids), w[ids])
            except ValueError as exc:  # the writer erased one after this view opened: never served
                assert "removed since this read-only view was opened" in str(exc)
            r.close()
            opened += 1
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert opened >= 5 and len(w_store) == 390
    w_store.close()
