"""Identity-guided retrieval (eq. 1-2) over a real FAISS store, checked against hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.core.retrieval import RetrievalError, retrieve
from latent_rag_ros.store import open_store

L, C = 2, 4


@pytest.fixture()
def store(tmp_path: Path):
    s = open_store(tmp_path / "store", create=True, dim=3, num_ws=L, w_dim=C)
    vecs = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], np.float32)
    lat = np.arange(len(vecs) * L * C, dtype=np.float32).reshape(len(vecs), L, C)
    ids = s.add(vecs, lat, ["a", "a", "b", "b", "c", "d"])
    yield s, vecs, lat, ids
    s.close()


def test_cosine_top_m_matches_hand_computation(store) -> None:
    s, vecs, lat, ids = store
    q = np.array([2.0, 0.9, 0.1], np.float32)  # not normalised: eq. 1 normalises
    cos = vecs @ q / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(q))
    order = np.argsort(-cos)[:3]
    got = retrieve(s, q, m=3)
    assert got.latents.shape == (1, 3, L, C)
    np.testing.assert_array_equal(got.ids[0], ids[order])
    np.testing.assert_allclose(got.scores[0], cos[order], rtol=1e-5)
    np.testing.assert_array_equal(got.latents[0], lat[order])


def test_query_own_entry_is_never_returned(store) -> None:
    s, vecs, _, ids = store
    # An exact duplicate of entry 0 is dropped by the duplicate guard even without its id ...
    got = retrieve(s, vecs[0], m=2)
    assert ids[0] not in got.ids[0]
    np.testing.assert_array_equal(got.ids[0], ids[[1, 2]])
    # ... and by id when the caller knows it, even when the vector is not an exact duplicate.
    q = vecs[1] + np.array([0.0, 0.0, 0.01], np.float32)
    got = retrieve(s, q, m=2, exclude_ids=[int(ids[1])])
    assert ids[1] not in got.ids[0] and ids[0] in got.ids[0]


def test_same_label_exclusion(store) -> None:
    s, _, _, ids = store
    got = retrieve(s, np.array([1, 0.05, 0], np.float32), m=2, exclude_labels=["a"])
    assert set(got.ids[0].tolist()).isdisjoint({int(ids[0]), int(ids[1])})
    np.testing.assert_array_equal(got.ids[0], ids[[2, 3]])


def test_batched_queries_equal_single(store) -> None:
    s = store[0]
    qs = np.array([[1, 0.2, 0.1], [0.1, 0.2, 1.0], [0.5, 0.5, 0.0]], np.float32)
    both = retrieve(s, qs, m=3)
    for i in range(3):
        one = retrieve(s, qs[i], m=3)
        np.testing.assert_array_equal(one.ids[0], both.ids[i])


@pytest.mark.parametrize(
    "query, m, needle",
    [
        (np.ones(4, np.float32), 2, "length 3"),
        (np.array([np.nan, 0, 0], np.float32), 2, "NaN"),
        (np.zeros(3, np.float32), 2, "zero norm"),
        (np.ones(3, np.float32), 0, "m must be"),
        (np.ones(3, np.float32), 7, "larger than the store"),
    ],
)
def test_bad_requests(store, query, m, needle) -> None:
    s = store[0]
    with pytest.raises(RetrievalError, match=needle):
        retrieve(s, query, m=m)


def test_too_few_eligible_entries(store) -> None:
    s, vecs, _, _ = store
    with pytest.raises(RetrievalError, match="eligible"):
        retrieve(s, vecs[0], m=6)  # 6 entries but the query's own is excluded
