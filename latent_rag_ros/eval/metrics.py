"""Metrics the paper reports: PSNR/SSIM (privacy, recovery), Rank-k/mAP (utility), embedding cosine.

PSNR and SSIM come from scikit-image. The Market-1501 ranking protocol is written here in a
vectorised form (no library offers it without pulling in a training framework); it follows the
standard evaluation used by Market-1501, torchreid and reid-strong-baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (data range 255); identical -> inf."""
    a, b = _pair(a, b)
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM between two uint8 HxWx3 images (scikit-image, channel_axis=-1, data_range=255).

    The 7x7 window shrinks (odd sizes) for crops smaller than 7 pixels on a side.
    """
    a, b = _pair(a, b)
    side = min(a.shape[0], a.shape[1])
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"image too small for SSIM: {a.shape}")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win))


def image_similarity(protected: Sequence[np.ndarray], original: Sequence[np.ndarray]) -> dict[str, object]:
    """Per-image and mean SSIM/PSNR of protected (or recovered) crops against their originals.

    ``psnr_mean`` is inf as soon as one pair is identical (as the paper's "-" row reports);
    ``psnr_mean_finite`` averages the finite values only (None if none is finite).
    """
    if len(protected) != len(original):
        raise ValueError(f"{len(protected)} protected images for {len(original)} originals")
    if not protected:
        raise ValueError("no images to compare")
    s = [ssim(p, o) for p, o in zip(protected, original, strict=True)]
    p = [psnr(x, o) for x, o in zip(protected, original, strict=True)]
    finite = [v for v in p if math.isfinite(v)]
    return {
        "ssim_mean": float(np.mean(s)),
        "psnr_mean": math.inf if len(finite) < len(p) else float(np.mean(p)),
        "psnr_mean_finite": float(np.mean(finite)) if finite else None,
        "ssim": s,
        "psnr": p,
        "count": len(s),
    }


def embedding_cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] embedding matrices (protected vs original)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] matrices of one shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def different_people(protected: np.ndarray, original: np.ndarray, groups: Sequence, labelled: bool) -> dict[str, Any]:
    """How a protected embedding compares with its own original and with OTHER people's originals.

    ``groups`` are pids when ``labelled`` (different pid = different person), else frame ids (two
    crops of one frame are two different people). Returns the mean cosine to different people's
    originals and the own-match rate: the share of queries whose own original is more similar than
    every different person's original, with its chance level (mean of 1 / (1 + number compared)).
    Values are None when no query has a different person to compare with.
    """
    a = np.asarray(protected, dtype=np.float64)
    b = np.asarray(original, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] matrices of one shape, got {a.shape} and {b.shape}")
    g = np.asarray([str(x) for x in groups])
    if len(g) != len(a):
        raise ValueError(f"{len(g)} groups for {len(a)} embeddings")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sims = a @ b.T
    mask = (g[:, None] != g[None, :]) if labelled else ((g[:, None] == g[None, :]) & ~np.eye(len(g), dtype=bool))
    rows = mask.any(axis=1)
    if not rows.any():
        return {"different_people_cosine_mean": None, "own_match_rate": None, "own_match_chance": None,
                "own_match_queries": 0}
    masked = np.where(mask, sims, -np.inf)
    wins = np.diag(sims)[rows] > masked[rows].max(axis=1)
    return {"different_people_cosine_mean": float(sims[mask].mean()),
            "own_match_rate": float(wins.mean()),
            "own_match_chance": float(np.mean(1.0 / (1.0 + mask[rows].sum(axis=1)))),
            "own_match_queries": int(rows.sum())}


def cosine_distmat(q: np.ndarray | torch.Tensor, g: np.ndarray | torch.Tensor) -> np.ndarray:
    """Distance matrix 1 - cosine between query [Q, D] and gallery [G, D] features."""
    q = q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else np.asarray(q)
    g = g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return (1.0 - q @ g.T).astype(np.float32)


def evaluate_rank(distmat: np.ndarray, q_pids: Sequence | np.ndarray, g_pids: Sequence | np.ndarray,
                  q_camids: Sequence | np.ndarray, g_camids: Sequence | np.ndarray,
                  max_rank: int = 50, chunk: int = 256) -> tuple[np.ndarray, float]:
    """Standard Market-1501 protocol: returns (CMC curve [max_rank], mAP).

    For each query the gallery is sorted by distance (stable sort); entries with the query's pid
    AND camera are removed; queries without any remaining true match are skipped. CMC is the
    mean over valid queries of the cumulative first-match indicator; AP is the mean of the
    precision at each true match. When the gallery is smaller than ``max_rank`` the curve is
    padded with its last value. Raises ValueError when no query has a valid match.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    nq, ng = distmat.shape
    if (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (nq, nq, ng, ng):
        raise ValueError(f"label lengths do not match the {nq}x{ng} distance matrix")
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    eff_rank = min(max_rank, ng)
    cmc_sum = np.zeros(eff_rank, dtype=np.float64)
    ap_sum = 0.0
    n_valid = 0
    for s in range(0, nq, chunk):
        d = distmat[s:s + chunk]
        order = np.argsort(d, axis=1, kind="stable")
        gp, gc = g_pids[order], g_camids[order]
        same_pid = gp == q_pids[s:s + chunk, None]
        keep = ~(same_pid & (gc == q_camids[s:s + chunk, None]))
        rel = same_pid & keep                                # true matches after removal
        n_rel = rel.sum(axis=1)
        valid = n_rel > 0
        if not valid.any():
            continue
        rel, keep, n_rel = rel[valid], keep[valid], n_rel[valid]
        pos = np.cumsum(keep, axis=1) - 1                    # rank of each kept entry (0-based)
        first = np.where(rel, pos, np.iinfo(np.int64).max).min(axis=1)
        cmc_sum += (first[:, None] <= np.arange(eff_rank)[None, :]).sum(axis=0)
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.maximum(pos + 1.0, 1.0)  # pos is -1 before the first kept entry
        ap_sum += float(((precision * rel).sum(axis=1) / n_rel).sum())
        n_valid += int(valid.sum())
    if n_valid == 0:
        raise ValueError("no query has a valid match in the gallery (all are missing or same-camera)")
    cmc = cmc_sum / n_valid
    if eff_rank < max_rank:
        cmc = np.concatenate([cmc, np.full(max_rank - eff_rank, cmc[-1])])
    return cmc.astype(np.float32), ap_sum / n_valid
