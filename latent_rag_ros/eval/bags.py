"""Camera bags from data sets and videos (``latent-rag make-bag``), on :mod:`latent_rag_ros.bagio`.

Writing a bag from a data set needs :mod:`latent_rag_ros.datasets`, which itself reads bags with
:mod:`latent_rag_ros.bagio`; keeping ``make_bag`` here (eval layer) and the bag I/O below it is what
keeps that pair free of an import cycle. The bag I/O names are re-exported for existing callers.
A :class:`BagPlan` says what to write; :func:`make_bag` writes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latent_rag_ros import datasets, plans
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
    "STRING_TYPE", "BagError", "BagPlan", "BagRecorder", "bag_topics", "image_message", "image_topics", "make_bag",
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


@dataclass(frozen=True)
class BagPlan:
    """What one camera bag holds (the fields were ``make_bag``'s parameters); a bad field raises PlanError.

    ``source``: Samples (each crop becomes a frame labelled with its pid/camid), BGR arrays, or a
    path accepted by ``datasets.open_source`` (a video is written frame by frame); ``split`` picks
    one split (query / gallery / train) of a benchmark folder given as a path. Frames go to ``out``
    (a new bag, ``storage`` sqlite3 or mcap) as ``sensor_msgs/msg/Image`` (bgr8, ``frame_id``) on
    ``topic`` at ``rate_hz``, stamped from ``start_ns`` (default: now). ``labels``, parallel to the
    frames, overrides the labels: dicts with ``boxes`` (xyxy), ``pids``, ``camid``; they go to
    ``label_topic`` as JSON strings.
    """

    source: Any = field(repr=False)
    out: str | os.PathLike[str]
    topic: str = IMAGE_TOPIC
    storage: str = "sqlite3"
    rate_hz: float = 10.0
    labels: Sequence[dict[str, Any] | None] | None = field(default=None, repr=False)
    start_ns: int | None = None
    frame_id: str = "camera"
    label_topic: str = LABEL_TOPIC
    progress: bool = False
    split: str | None = None

    def __post_init__(self) -> None:
        plans.require(self, "source", self.source is not None, "samples, BGR frames or a source path")
        plans.path(self, "out")
        plans.text(self, "topic")
        plans.one_of(self, "storage", STORAGES)
        plans.positive(self, "rate_hz")
        plans.require(self, "labels", self.labels is None or isinstance(self.labels, Sequence),
                      "a sequence of label dicts (or None entries), parallel to the frames, or None")
        plans.at_least(self, "start_ns", 0, optional=True)
        plans.text(self, "frame_id")
        plans.text(self, "label_topic")
        plans.one_of(self, "split", (None, *datasets.SPLITS))


def make_bag(plan: BagPlan) -> dict[str, Any]:
    """Write ``plan``'s frames (and labels when known) as a rosbag2 camera stream.

    Returns a summary: ``{"path", "frames", "labelled", "topic", "storage"}``.
    """
    out, topic, storage, labels = plan.out, plan.topic, plan.storage, plan.labels
    period = round(1e9 / plan.rate_hz)
    t0 = time.time_ns() if plan.start_ns is None else int(plan.start_ns)
    ts = typestore()
    n = n_lab = 0
    items: Iterable[tuple[np.ndarray, dict[str, Any] | None]] = _frames_and_labels(plan.source, plan.split)
    if plan.progress:
        items = tqdm(items, desc="make-bag", unit="frame", disable=None)
    with BagRecorder(out, storage) as rec:
        img_conn = rec.add_topic(topic, IMAGE_TYPE)
        lab_conn = None
        for i, (frame, lab) in enumerate(items):
            if labels is not None:
                lab = labels[i] if i < len(labels) else None
            stamp = t0 + i * period
            rec.write_message(img_conn, stamp, image_message(frame, stamp, plan.frame_id))
            if lab is not None:
                if lab_conn is None:
                    lab_conn = rec.add_topic(plan.label_topic, STRING_TYPE)
                payload = {"stamp": stamp, "boxes": [[float(v) for v in b] for b in lab.get("boxes", [])],
                           "pids": [None if p is None else str(p) for p in lab.get("pids", [])],
                           "camid": None if lab.get("camid") is None else int(lab["camid"])}
                rec.write_message(lab_conn, stamp, ts.types[STRING_TYPE](data=json.dumps(payload)))
                n_lab += 1
            n += 1
    return {"path": str(out), "frames": n, "labelled": n_lab, "topic": topic, "storage": storage}
