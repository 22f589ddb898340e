"""The one measurement path of the evaluation: every method and backbone is judged on the published image.

``published`` is what the remote server decodes (uint8 at crop size, lossless PNG round trip);
``embed_published`` is the only embedding function the evaluation uses for protected and raw
images; ``utility`` and ``privacy`` turn those into the report's figures. Split out of
:mod:`latent_rag_ros.eval.runner` (the pipeline) so the path can be read, and tested, on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from latent_rag_ros.eval.metrics import (
    cosine_distmat,
    different_people,
    embedding_cosine,
    evaluate_rank,
    image_similarity,
)
from latent_rag_ros.eval.report import file_record
from latent_rag_ros.eval.sources import EvalData

__all__ = ["Backbone", "embed_crops", "embed_published", "parse_reid_list", "privacy", "published", "reid_source",
           "utility"]


@torch.no_grad()
def embed_crops(reid: torch.nn.Module, crops: Sequence[np.ndarray], batch_size: int = 32,
                progress: bool = False, desc: str = "embed") -> np.ndarray:
    """L2-normalised re-ID features [N, D] of BGR crops (each resized to the encoder's input size)."""
    from latent_rag_ros.core.imaging import bgr_to_tensor

    size = tuple(getattr(reid, "input_size", (256, 128)))
    device = next(reid.parameters()).device
    feats = []
    starts: Sequence[int] = range(0, len(crops), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, disable=None)
    for s in starts:
        x = bgr_to_tensor(crops[s:s + batch_size], size, device)  # type: ignore[arg-type]
        feats.append(reid(x).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, int(getattr(reid, "dim", 0))), np.float32)


def published(crops: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images as the remote server decodes them: uint8 at crop size, through a lossless PNG round trip.

    Every method (Latent-RAG from the graph's ``rgb8`` ProtectedCrop or the offline Protector, and
    the baselines) is measured on this, so no method is judged on a private float path.
    """
    import cv2

    out = []
    for i, img in enumerate(crops):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise ValueError(f"published image {i}: expected uint8 HxWx3, got {getattr(img, 'shape', type(img))}")
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise ValueError(f"published image {i}: PNG encoding failed")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return out


def embed_published(reid: torch.nn.Module, images: Sequence[np.ndarray], progress: bool = False,
                    desc: str = "embed") -> np.ndarray:
    """The one embedding function of the evaluation: :func:`embed_crops` of the :func:`published` images."""
    return embed_crops(reid, published(images), progress=progress, desc=desc)


def parse_reid_list(text: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``"deepsort_mobilenetv2,bagtricks:PATH"`` -> ``[("deepsort_mobilenetv2", None), ("bagtricks", "PATH")]``."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        kind, _, path = item.partition(":")
        out.append((kind.strip(), path.strip() or None))
    return out


class Backbone:
    """One re-ID backbone with cached raw-gallery and raw-query features."""

    def __init__(self, name: str, net: torch.nn.Module, source: dict[str, Any]) -> None:
        self.name, self.net, self.source = name, net, source
        self.gallery: np.ndarray | None = None
        self.original: np.ndarray | None = None


def utility(bb: Backbone, data: EvalData, protected: Sequence[np.ndarray] | None, progress: bool,
            embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """Re-ID utility of protected queries; ``embeddings`` only for the labelled float-path figures."""
    feats = embeddings if embeddings is not None else embed_published(bb.net, protected or [], progress=progress,
                                                                      desc=f"embed {bb.name}")
    assert bb.original is not None
    cos = embedding_cosine(feats, bb.original)
    out: dict[str, Any] = {"embedding_cosine_mean": float(cos.mean()), "rank1": None, "rank5": None,
                           "rank10": None, "mAP": None}
    labelled = all(p is not None for p in data.q_pids)
    out.update(different_people(feats, bb.original, data.q_pids if labelled else data.q_groups, labelled))
    if data.labelled and bb.gallery is not None and len(bb.gallery):
        try:
            cmc, m_ap = evaluate_rank(cosine_distmat(feats, bb.gallery), data.q_pids, data.g_pids,
                                      data.q_camids, data.g_camids, max_rank=50)
            out.update(rank1=float(cmc[0]), rank5=float(cmc[4]), rank10=float(cmc[9]), mAP=float(m_ap))
        except ValueError as exc:
            out["rank_error"] = str(exc)
    return out


def privacy(protected: Sequence[np.ndarray], original: Sequence[np.ndarray]) -> dict[str, Any]:
    """SSIM/PSNR of the published protected images against their originals."""
    sim = image_similarity(published(protected), original)
    return {k: sim[k] for k in ("ssim_mean", "psnr_mean", "psnr_mean_finite", "count")}


def reid_source(kind: str, path: str | None) -> dict[str, Any]:
    """The report's record of a re-ID backbone: kind, weights path and sha256."""
    if path:
        rec = file_record(path)
    elif kind == "deepsort_mobilenetv2":
        try:
            from latent_rag_ros.models.reid import deepsort_weights_path

            rec = file_record(deepsort_weights_path())
        except Exception:  # noqa: BLE001 - the record is informative only
            rec = {"path": None, "sha256": None}
    else:
        rec = {"path": None, "sha256": None}
    rec["kind"] = kind
    return rec


def rank_on_tracks(encoder: torch.nn.Module, data: Any) -> dict[str, Any]:
    """Rank-1/5 and mAP (Market-1501 protocol, time thirds as cameras) of an encoder on tracked crops.

    ``data``: :class:`latent_rag_ros.eval.tracks.LabelledCrops`; queries and gallery from
    :func:`~latent_rag_ros.eval.tracks.query_gallery`; raw crops embedded by :func:`embed_published`.
    """
    from latent_rag_ros.eval.tracks import query_gallery

    q, g = query_gallery(data)
    feats = embed_published(encoder, data.images)
    cmc, m_ap = evaluate_rank(cosine_distmat(feats[q], feats[g]), [data.pids[i] for i in q],
                              [data.pids[i] for i in g], [data.camids[i] for i in q], [data.camids[i] for i in g],
                              max_rank=10)
    return {"rank1": float(cmc[0]), "rank5": float(cmc[4]), "mAP": float(m_ap), "n_query": len(q),
            "n_gallery": len(g), "n_ids": len(set(data.pids))}
