"""Camera bags from data sets and videos (``latent-rag make-bag``), on :mod:`latent_rag_ros.bagio`.

Writing a bag from a data set needs :mod:`latent_rag_ros.datasets`, which itself reads bags with
:mod:`latent_rag_ros.bagio`; keeping ``make_bag`` here (eval layer) and the bag I/O below it is what
keeps that pair free of an import cycle. The bag I/O names are re-exported for existing callers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latent_rag_ros import datasets
from latent_rag_ros.bagio import (
    COMPRESSED_TYPE,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    LABEL_TOPIC,
    PROTECTED_TOPIC,
    PROTECTED_TYPE,
    STORAGES,
    STRING_TYPE,
    BagError,
    BagRecorder,
    bag_topics,
    image_message,
    image_topics,
    message_to_bgr,
    protected_message,
    read_images,
    read_labels,
    read_protected,
    typestore,
)

__all__ = [
    "COMPRESSED_TYPE", "IMAGE_TOPIC", "IMAGE_TYPE", "LABEL_TOPIC", "PROTECTED_TOPIC", "PROTECTED_TYPE", "STORAGES",
    "STRING_TYPE", "BagError", "BagRecorder", "bag_topics", "image_message", "image_topics", "make_bag",
    "message_to_bgr", "protected_message", "read_images", "read_labels", "read_protected", "typestore",
]


def _frames_and_labels(source: Any, split: str | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any] | None]]:
    """Turn Samples, arrays or a source path into (frame, label dict or None) pairs."""
    if isinstance(source, (str, Path)):
        kind = datasets.source_kind(source)
        if kind == "video":
            for _i, frame in datasets.read_video_frames(source):
                yield frame, None
            return
        source = datasets.open_source(source, split=split)
    for item in source:
        if isinstance(item, np.ndarray):
            yield item, None
            continue
        img = item.image  # a crop becomes a whole frame; its label box covers the frame
        h, w = img.shape[:2]
        if item.pid is None and item.camid is None:
            yield img, None
        else:
            yield img, {"boxes": [[0.0, 0.0, float(w), float(h)]], "pids": [item.pid], "camid": item.camid}


def make_bag(source: Any, out: str | Path, topic: str = IMAGE_TOPIC, storage: str = "sqlite3",
             rate_hz: float = 10.0, labels: Sequence[dict[str, Any] | None] | None = None,
             start_ns: int | None = None, frame_id: str = "camera", label_topic: str = LABEL_TOPIC,
             progress: bool = False, split: str | None = None) -> dict[str, Any]:
    """Write frames as ``sensor_msgs/msg/Image`` (bgr8) at ``rate_hz``, plus labels when known.

    ``source``: Samples (each crop becomes a frame labelled with its pid/camid), BGR arrays, or a
    path accepted by ``datasets.open_source`` (a video is written frame by frame). ``labels``,
    parallel to the frames, overrides the labels: dicts with ``boxes`` (xyxy), ``pids``, ``camid``.
    ``split`` picks one split (query / gallery / train) of a benchmark folder given as a path.
    Returns a summary: ``{"path", "frames", "labelled", "topic", "storage"}``.
    """
    if rate_hz <= 0:
        raise ValueError("rate_hz must be > 0")
    period = round(1e9 / rate_hz)
    t0 = time.time_ns() if start_ns is None else int(start_ns)
    ts = typestore()
    n = n_lab = 0
    items: Iterable[tuple[np.ndarray, dict[str, Any] | None]] = _frames_and_labels(source, split)
    if progress:
        items = tqdm(items, desc="make-bag", unit="frame", disable=None)
    with BagRecorder(out, storage) as rec:
        img_conn = rec.add_topic(topic, IMAGE_TYPE)
        lab_conn = None
        for i, (frame, lab) in enumerate(items):
            if labels is not None:
                lab = labels[i] if i < len(labels) else None
            stamp = t0 + i * period
            rec.write_message(img_conn, stamp, image_message(frame, stamp, frame_id))
            if lab is not None:
                if lab_conn is None:
                    lab_conn = rec.add_topic(label_topic, STRING_TYPE)
                payload = {"stamp": stamp, "boxes": [[float(v) for v in b] for b in lab.get("boxes", [])],
                           "pids": [None if p is None else str(p) for p in lab.get("pids", [])],
                           "camid": None if lab.get("camid") is None else int(lab["camid"])}
                rec.write_message(lab_conn, stamp, ts.types[STRING_TYPE](data=json.dumps(payload)))
                n_lab += 1
            n += 1
    return {"path": str(out), "frames": n, "labelled": n_lab, "topic": topic, "storage": storage}
