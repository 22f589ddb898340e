"""Metrics: the Market-1501 ranking protocol against a loop-based reference, PSNR/SSIM, baselines."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from latent_rag_ros.eval.baselines import BASELINES, apply_baseline, gaussian_blur, mosaic
from latent_rag_ros.eval.metrics import (
    cosine_distmat,
    different_people,
    embedding_cosine,
    evaluate_rank,
    image_similarity,
    psnr,
    ssim,
)

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Direct, per-query implementation of the standard protocol (written independently)."""
    cmc_all, aps = [], []
    for i in range(distmat.shape[0]):
        order = sorted(range(distmat.shape[1]), key=lambda j: (distmat[i, j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        good = [g_pids[j] == q_pids[i] for j in kept]
        if not any(good):
            continue
        first = good.index(True)
        cmc_all.append([1.0 if r >= first else 0.0 for r in range(max_rank)])
        hits, precisions = 0, []
        for rank, g in enumerate(good):
            if g:
                hits += 1
                precisions.append(hits / (rank + 1))
        aps.append(sum(precisions) / len(precisions))
    return np.mean(cmc_all, axis=0), float(np.mean(aps)), len(aps)


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_rank_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = rng.integers(5, 30), rng.integers(10, 80)
    n_ids, n_cams = rng.integers(3, 9), rng.integers(2, 5)
    q_pids, g_pids = rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng)
    q_cam, g_cam = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    q_pids[0] = n_ids + 5  # a query whose identity is absent from the gallery: must be skipped
    # repeated distances make ties; the stable order must agree with the reference's (distance, index)
    dist = rng.integers(0, 6, (nq, ng)).astype(np.float32) / 5.0
    max_rank = 10
    cmc, m_ap = evaluate_rank(dist, q_pids, g_pids, q_cam, g_cam, max_rank=max_rank, chunk=7)
    ref_cmc, ref_map, n_valid = reference_rank(dist, q_pids, g_pids, q_cam, g_cam, max_rank)
    assert n_valid < nq
    assert cmc.shape == (max_rank,)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert m_ap == pytest.approx(ref_map, abs=1e-9)


def test_same_camera_matches_are_excluded() -> None:
    # the only gallery entry of pid 1 seen from the query's camera must not count as a match
    dist = np.array([[0.0, 0.5, 0.9]], dtype=np.float32)
    cmc, m_ap = evaluate_rank(dist, [1], [1, 2, 1], [0], [0, 1, 1], max_rank=3)
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])
    assert m_ap == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_rank(dist[:, :1], [1], [1], [0], [0])


def test_cmc_is_padded_when_gallery_is_short() -> None:
    cmc, m_ap = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    assert m_ap == pytest.approx(0.5)


def _frame_crops(n: int = 4) -> list[np.ndarray]:
    cap = cv2.VideoCapture(VTEST)
    ok, frame = cap.read()
    cap.release()
    assert ok, VTEST
    return [np.ascontiguousarray(frame[100 + 40 * i:228 + 40 * i, 200 + 90 * i:264 + 90 * i]) for i in range(n)]


def test_psnr_ssim_identity_and_blur() -> None:
    crops = _frame_crops()
    a = crops[0]
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)
    b = gaussian_blur(a)
    assert 0.0 < ssim(b, a) < 1.0
    assert 10.0 < psnr(b, a) < 60.0
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert psnr(noisy, a) < psnr(b, a) + 20
    sim = image_similarity(crops, crops)
    assert sim["ssim_mean"] == pytest.approx(1.0) and sim["psnr_mean"] == math.inf
    assert sim["psnr_mean_finite"] is None
    mixed = image_similarity([crops[0], gaussian_blur(crops[1])], crops[:2])
    assert mixed["psnr_mean"] == math.inf and math.isfinite(mixed["psnr_mean_finite"])
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:-1])


def test_baselines_keep_size_and_hide_detail() -> None:
    crops = _frame_crops()
    for name in BASELINES:
        out = apply_baseline(name, crops)
        assert [o.shape for o in out] == [c.shape for c in crops]
        assert all(o.dtype == np.uint8 for o in out)
    assert all(np.array_equal(o, c) for o, c in zip(apply_baseline("none", crops), crops))
    s_blur = image_similarity(apply_baseline("blur", crops), crops)["ssim_mean"]
    s_mosaic = image_similarity(apply_baseline("mosaic", crops), crops)["ssim_mean"]
    assert s_blur < 0.95 and s_mosaic < 0.95
    m = mosaic(crops[0])  # 128-high crop: 4x4 blocks, constant inside each block
    assert (m[:4, :4] == m[0, 0]).all()
    strong = apply_baseline("mosaic", crops, block=32)  # 16x16 blocks on a 128-high crop
    assert image_similarity(strong, crops)["ssim_mean"] < s_mosaic
    assert (strong[0][:16, :16] == strong[0][0, 0]).all()
    assert image_similarity(apply_baseline("blur", crops, kernel=41, sigma=14), crops)["ssim_mean"] < s_blur
    with pytest.raises(ValueError, match="unknown baseline"):
        apply_baseline("pixelfade", crops)


def test_embedding_cosine_and_distmat() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 8))
    np.testing.assert_allclose(embedding_cosine(a, a), 1.0)
    np.testing.assert_allclose(embedding_cosine(a, -a), -1.0)
    d = cosine_distmat(a, 3 * a)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6)
    assert d.shape == (5, 5) and (d >= -1e-6).all() and (d <= 2 + 1e-6).all()


def _different_people_loop(p: np.ndarray, o: np.ndarray, groups: list, labelled: bool) -> tuple:
    """Plain-loop reference for different_people."""
    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    diffs, wins, chances = [], [], []
    for i in range(len(p)):
        others = [j for j in range(len(p)) if (groups[j] != groups[i] if labelled else
                                              (groups[j] == groups[i] and j != i))]
        if not others:
            continue
        d = [cos(p[i], o[j]) for j in others]
        diffs += d
        wins.append(cos(p[i], o[i]) > max(d))
        chances.append(1.0 / (1 + len(others)))
    return float(np.mean(diffs)), float(np.mean(wins)), float(np.mean(chances)), len(wins)


@pytest.mark.parametrize("labelled", [True, False])
def test_different_people_matches_loop(labelled: bool) -> None:
    rng = np.random.default_rng(3)
    o = rng.normal(size=(13, 6))
    p = o + rng.normal(scale=0.8, size=o.shape)   # noisy "protected" embeddings of the same people
    groups = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5]   # frame 2 and 4 hold one person: no comparison
    got = different_people(p, o, groups, labelled)
    want = _different_people_loop(p, o, groups, labelled)
    assert got["different_people_cosine_mean"] == pytest.approx(want[0])
    assert got["own_match_rate"] == pytest.approx(want[1])
    assert got["own_match_chance"] == pytest.approx(want[2])
    assert got["own_match_queries"] == want[3] == (13 if labelled else 11)
    # identical embeddings always match their own original; unrelated ones rarely do
    assert different_people(o, o, groups, labelled)["own_match_rate"] == 1.0
    assert different_people(np.zeros_like(o) + 1.0, o, [0] * 13, False)["own_match_rate"] < 0.5


def test_different_people_without_comparisons() -> None:
    e = np.eye(3)
    got = different_people(e, e, [0, 1, 2], labelled=False)
    assert got["own_match_rate"] is None and got["own_match_queries"] == 0
    with pytest.raises(ValueError, match="groups"):
        different_people(e, e, [0, 1], labelled=False)
