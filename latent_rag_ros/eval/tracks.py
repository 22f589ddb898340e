"""Identity labels for an unlabelled video from tracks: an IoU + appearance tracker over detections.

vtest.avi and a robot's own camera bags carry no identity labels, so Rank-1/mAP needs labels
derived from the video itself. Detections of consecutive frames are linked by the Hungarian
assignment of a cost mixing box overlap (IoU with the track's last box) and appearance (the
Bhattacharyya distance of HSV colour histograms). Appearance is deliberately NOT the re-ID
network under test, so the labels do not favour it. Tracks shorter than ``min_len`` detections are
dropped (their crops stay unlabelled distractors). Known limits: a person who leaves and re-enters,
or who is hidden for more than ``max_gap`` frames, becomes two identities; two people crossing with
similar clothes can swap. ``contact_sheet`` writes one row per track so a person can check them.

Time segments act as cameras (Market-1501 protocol): ``camid = frame // segment`` (relative to the
first frame), so a query is matched only against the same person at another time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class TrackerConfig:
    """Tracker gates: IoU and appearance thresholds, the longest gap, the shortest kept track."""

    min_iou: float = 0.2          # a detection continues a track only if it overlaps its last box this much
    max_appearance: float = 0.5   # ... and its colour histogram is this close (Bhattacharyya, 0 = same)
    appearance_weight: float = 1.0
    max_gap: int = 6              # frames a track may go undetected (HOG misses people now and then)
    min_len: int = 5              # detections a track needs to become an identity
    min_motion: float = 10.0      # pixels its box centre must travel (drops static false detections)


@dataclass
class Track:
    """One tracked person: the indices of its detections (into the caller's list), frames and boxes."""

    tid: int
    members: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    hist: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.members)


def appearance(crop: np.ndarray) -> np.ndarray:
    """L1-normalised HSV histogram (12 hue x 4 saturation x 4 value bins) of the crop's central strip.

    The strip (middle half of the width) holds mostly the person, little background.
    """
    h, w = crop.shape[:2]
    core = crop[h // 10: h - h // 10 or h, w // 4: w - w // 4 or w]
    hsv = cv2.cvtColor(core if core.size else crop, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256]).astype(np.float32).ravel()
    return hist / max(float(hist.sum()), 1e-6)


def bhattacharyya(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of two normalised histograms (0 identical, 1 disjoint)."""
    return float(np.sqrt(max(0.0, 1.0 - float(np.sqrt(a * b).sum()))))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def track(frames: Sequence[int], boxes: Sequence[Sequence[float]], crops: Sequence[np.ndarray],
          cfg: TrackerConfig | None = None) -> list[Track]:
    """Link detections (parallel lists: frame index, xyxy box, BGR crop) into tracks of >= ``min_len``.

    Returns the kept tracks, numbered 0.. in order of their first frame.
    """
    cfg = cfg or TrackerConfig()
    if not (len(frames) == len(boxes) == len(crops)):
        raise ValueError(f"track: {len(frames)} frames, {len(boxes)} boxes, {len(crops)} crops (must be equal)")
    by_frame: dict[int, list[int]] = {}
    for i, f in enumerate(frames):
        by_frame.setdefault(int(f), []).append(i)
    hists = [appearance(c) for c in crops]
    tracks: list[Track] = []
    for f in sorted(by_frame):
        dets = by_frame[f]
        live = [t for t in tracks if 0 < f - t.frames[-1] <= cfg.max_gap]
        cost = np.full((len(live), len(dets)), np.inf)
        for a, t in enumerate(live):
            for b, d in enumerate(dets):
                ov = iou(t.boxes[-1], boxes[d])
                app = bhattacharyya(t.hist, hists[d])  # type: ignore[arg-type]
                if ov >= cfg.min_iou and app <= cfg.max_appearance:
                    cost[a, b] = (1.0 - ov) + cfg.appearance_weight * app
        matched: set[int] = set()
        if live and dets:
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
            for a, b in zip(rows, cols, strict=True):
                if np.isfinite(cost[a, b]):
                    _extend(live[a], dets[b], f, boxes[dets[b]], hists[dets[b]])
                    matched.add(b)
        for b, d in enumerate(dets):
            if b not in matched:
                t = Track(len(tracks))
                _extend(t, d, f, boxes[d], hists[d])
                tracks.append(t)
    kept = [t for t in tracks if len(t) >= cfg.min_len and _motion(t) >= cfg.min_motion]
    for k, t in enumerate(kept):
        t.tid = k
    return kept


def _motion(t: Track) -> float:
    """Largest distance of the box centre from its first position (pixels)."""
    c = np.asarray([(b[:2] + b[2:]) / 2 for b in t.boxes])
    return float(np.linalg.norm(c - c[0], axis=1).max())


def _extend(t: Track, member: int, frame: int, box: Sequence[float], hist: np.ndarray) -> None:
    t.members.append(member)
    t.frames.append(frame)
    t.boxes.append(np.asarray(box, dtype=np.float64))
    t.hist = hist if t.hist is None else 0.7 * t.hist + 0.3 * hist  # slow update: robust to a bad crop


def labels_of(tracks: Sequence[Track], n: int, prefix: str = "t") -> list[str | None]:
    """Per detection: ``f"{prefix}{tid}"`` for members of a kept track, else None."""
    out: list[str | None] = [None] * n
    for t in tracks:
        for m in t.members:
            out[m] = f"{prefix}{t.tid}"
    return out


def segment_camid(frame: int, start: int, segment: int) -> int:
    """The time segment of ``frame`` (its 'camera' for the Market-1501 protocol), 0-based."""
    return max(0, int(frame) - int(start)) // max(1, int(segment))


def track_samples(samples: Sequence[Any], cfg: TrackerConfig | None = None, segment: int = 60,
                  prefix: str = "t") -> int:
    """Label video/bag Samples (with ``frame`` and ``box``) in place: pid from tracks, camid = time segment.

    Samples without a kept track get pid None. Returns the number of identities.
    """
    usable = [i for i, s in enumerate(samples) if s.frame is not None and s.box is not None]
    if not usable:
        return 0
    tracks = track([samples[i].frame for i in usable], [samples[i].box for i in usable],
                   [samples[i].image for i in usable], cfg)
    pids = labels_of(tracks, len(usable), prefix)
    start = min(samples[i].frame for i in usable)
    for k, i in enumerate(usable):
        samples[i].pid = pids[k]
        samples[i].camid = segment_camid(samples[i].frame, start, segment)
    return len(tracks)


def contact_sheet(tracks: Sequence[Track], crops: Sequence[np.ndarray], path: str | Path,
                  per_row: int = 12, size: tuple[int, int] = (64, 32)) -> Path:
    """One row per track: its id and first frame, then ``per_row`` crops spread over the track."""
    h, w = size
    label_w = 70
    rows = []
    for t in tracks:
        row = np.full((h, label_w + per_row * (w + 2), 3), 255, np.uint8)
        cv2.putText(row, f"t{t.tid}", (2, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.putText(row, f"f{t.frames[0]}", (2, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(row, f"n{len(t)}", (2, 58), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        pick = np.unique(np.linspace(0, len(t) - 1, min(per_row, len(t))).round().astype(int))
        for k, j in enumerate(pick):
            x = label_w + k * (w + 2)
            row[:, x:x + w] = cv2.resize(crops[t.members[j]], (w, h), interpolation=cv2.INTER_AREA)
        rows.append(row)
    if not rows:
        raise ValueError("contact sheet: no tracks")
    sheet = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 200, np.uint8)]) for r in rows])
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), sheet):
        raise ValueError(f"{p}: cannot write the contact sheet")
    return p
