"""Milvus backend against Milvus Lite (embedded, a local .db file): same API, same answers."""

from __future__ import annotations

from pathlib import Path

import milvus_lite  # noqa: F401 - pinned in requirements.txt: a missing one fails, never skips
import numpy as np
import pymilvus  # noqa: F401
import pytest

from latent_rag_ros.core.retrieval import retrieve
from latent_rag_ros.store import StoreMismatchError, StoreNotFoundError, open_store
from latent_rag_ros.store.milvus_store import MILVUS_MAX_TOPK, MilvusStore

D, L, C = 16, 3, 8


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus") / "store.db"


def test_milvus_round_trip_matches_brute_force(milvus_db: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        open_store(milvus_db, collection="absent")
    rng = np.random.default_rng(0)
    v = rng.standard_normal((120, D)).astype(np.float32)
    w = (3 * rng.standard_normal((120, L, C))).astype(np.float32)
    labels = [f"p{i % 9}" for i in range(120)]
    s = open_store(milvus_db, create=True, dim=D, num_ws=L, w_dim=C, latent_dtype="float16",
                   built_with={"generator": "sg3:1"})
    assert isinstance(s, MilvusStore)
    ids = s.add(v, w, labels, [f"n{i}" for i in range(120)])
    assert ids.tolist() == list(range(120)) and len(s) == 120
    got = s.get_latents(ids[[7, 3]])
    np.testing.assert_array_equal(got, w[[7, 3]].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(s.get_vectors([5]), _unit(v[5:6]), atol=1e-6)
    assert s.get_labels([4, 5]) == labels[4:6] and s.get_names([9]) == ["n9"]

    q = rng.standard_normal((4, D)).astype(np.float32)
    scores, hits = s.search(q, 10)
    sims = _unit(q) @ _unit(v).T
    ref = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(hits, ids[ref])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, ref, axis=1), atol=1e-5)

    v0 = s.version
    s.remove(ref[0, :2])
    assert len(s) == 118 and s.version != v0
    _, hits = s.search(q[:1], 10)
    assert not set(ref[0, :2].tolist()) & set(hits[0].tolist())
    # k beyond Milvus's top-k cap: exact scan on the client, padded with -1
    scores, hits = s.search(q[:1], MILVUS_MAX_TOPK + 5)
    assert (hits[0, :118] >= 0).all() and (hits[0, 118:] == -1).all() and np.isinf(scores[0, 118:]).all()
    assert hits[0, :8].tolist() == [i for i in ref[0].tolist() if i not in ref[0, :2]]

    with pytest.raises(ValueError, match="shape"):
        s.add(v[:2, :5], w[:2])
    with pytest.raises(ValueError, match="float16 range"):
        s.add(v[:1], np.full((1, L, C), 7e4, np.float32))
    with pytest.raises(ValueError, match="already in the store"):
        s.add(v[:1], w[:1], names=["n50"])
    with pytest.raises(ValueError, match="unknown"):
        s.remove([int(ref[0, 0])])
    with pytest.raises(ValueError, match="k must"):
        s.search(q, 0)
    assert len(s) == 118

    r = retrieve(s, v[10:12], m=5, exclude_ids=[10, None])
    assert 10 not in r.ids[0] and 11 not in r.ids[1] and r.latents.shape == (2, 5, L, C)
    report = s.verify()
    assert report["ok"] and report["size"] == 118
    s.close()

    with pytest.raises(StoreMismatchError, match="generator"):
        open_store(milvus_db, built_with={"generator": "sg3:2"})
    with pytest.raises(StoreMismatchError, match="W\\+ shape"):
        open_store(milvus_db, num_ws=L, w_dim=C + 1)
    s = open_store(milvus_db, dim=D, num_ws=L, w_dim=C, built_with={"generator": "sg3:1"})
    assert len(s) == 118 and s.version.endswith(":2") and "n0" in s.names()
    new = s.add(v[:1], w[:1])
    assert new.tolist() == [120]  # ids are never reused
    assert s.stats()["latent_dtype"] == "float16"
    s.close()
