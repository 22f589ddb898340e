"""From a frame to person crops: detection, filtering and padding shared by nodes, CLI and datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_rag_ros.config import DetectorConfig


@dataclass
class Person:
    """One detected person: its crop (BGR), box (x0, y0, x1, y1 ints) and score."""

    crop: np.ndarray
    box: tuple[int, int, int, int]
    score: float


def crop_people(detector: Any, frame: np.ndarray, cfg: DetectorConfig) -> list[Person]:
    """Detect people, drop small or weak boxes, pad, clip to the frame and crop (best scores first).

    ``cfg`` carries ``min_score``, ``min_height``, ``max_crops`` and ``pad`` (DetectorConfig).
    """
    boxes, scores = detector.detect(frame)
    h, w = frame.shape[:2]
    out: list[Person] = []
    for i in np.argsort(-np.asarray(scores)):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        if scores[i] < cfg.min_score or (y1 - y0) < cfg.min_height:
            continue
        px, py = (x1 - x0) * cfg.pad, (y1 - y0) * cfg.pad
        bx = (max(0, int(x0 - px)), max(0, int(y0 - py)), min(w, round(x1 + px)), min(h, round(y1 + py)))
        if bx[2] - bx[0] < 8 or bx[3] - bx[1] < 16:
            continue
        out.append(Person(np.ascontiguousarray(frame[bx[1]:bx[3], bx[0]:bx[2]]), bx, float(scores[i])))
        if len(out) >= cfg.max_crops:
            break
    return out
