"""Identity labels from tracks on real people (vtest.avi), checked against hand-verified tracks.

``fixtures/vtest_tracks.json``: five tracks of frames 600-702 (every 3rd), each checked by eye on
the contact sheet (one person per row, no identity switch). The tracker must give every fixture
track one label of its own.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.eval import tracks as T

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
FIXTURE = Path(__file__).parent / "fixtures" / "vtest_tracks.json"


@pytest.fixture(scope="module")
def detections() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Real HOG detections (config defaults, as the nodes detect) on frames 600-702, every 3rd."""
    from latent_rag_ros.config import load_config
    from latent_rag_ros.datasets import read_video_frames
    from latent_rag_ros.models.factory import build_detector
    from latent_rag_ros.people import crop_people

    if not VTEST.is_file():
        pytest.fail("vtest.avi missing: tools/setup.sh installs it (Debian opencv-doc): run make setup")
    cfg = load_config(None, {})
    det = build_detector(cfg)
    frames, boxes, crops = [], [], []
    for i, fr in read_video_frames(VTEST, max_frames=703, frame_step=3):
        if i < 600:
            continue
        for p in crop_people(det, fr, cfg.detector):
            frames.append(i)
            boxes.append(np.asarray(p.box, np.float64))
            crops.append(p.crop)
    return frames, boxes, crops


def test_tracker_labels_match_hand_verified_tracks(detections, tmp_path: Path) -> None:
    frames, boxes, crops = detections
    tracks = T.track(frames, boxes, crops)
    labels = T.labels_of(tracks, len(frames))
    fixture = json.loads(FIXTURE.read_text())["tracks"]
    majority = []
    for ft in fixture:
        got = []
        for f, box in ft["detections"]:
            cands = [i for i, fi in enumerate(frames) if fi == f and T.iou(boxes[i], box) >= 0.9]
            got.append(labels[cands[0]] if cands else None)
        label, n = Counter(got).most_common(1)[0]
        assert label is not None, f"{ft['name']}: not tracked"
        assert n >= 0.9 * len(got), f"{ft['name']}: only {n}/{len(got)} detections carry its label {label}"
        majority.append(label)
    assert len(set(majority)) == len(majority), f"two hand-verified people share a label: {majority}"
    sheet = T.contact_sheet(tracks, crops, tmp_path / "sheet.png")
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_static_false_detections_and_short_tracks_are_dropped() -> None:
    rng = np.random.default_rng(0)
    person = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    other = np.full((64, 32, 3), (0, 0, 255), np.uint8)   # a red thing: another appearance
    frames, boxes, crops = [], [], []
    for k in range(8):
        frames += [k, k]
        boxes += [np.array([10 + 4 * k, 10, 42 + 4 * k, 74.0]), np.array([200, 10, 232, 74.0])]  # walker, static
        crops += [person, other]
    frames.append(3)
    boxes.append(np.array([400, 10, 432, 74.0]))   # seen once
    crops.append(person)
    tracks = T.track(frames, boxes, crops, T.TrackerConfig(min_len=5))
    assert len(tracks) == 1 and tracks[0].members == list(range(0, 16, 2))
    labels = T.labels_of(tracks, len(frames))
    assert labels[0] == "t0" and labels[1] is None and labels[-1] is None


def test_appearance_gate_splits_a_switch() -> None:
    """Same place, different colours from one frame to the next: two identities, not one."""
    red = np.full((64, 32, 3), (0, 0, 200), np.uint8)
    blue = np.full((64, 32, 3), (200, 0, 0), np.uint8)
    frames = list(range(10))
    boxes = [np.array([10 + k, 10, 42 + k, 74.0]) for k in range(10)]
    crops = [red] * 5 + [blue] * 5
    tracks = T.track(frames, boxes, crops, T.TrackerConfig(min_len=3, min_motion=0))
    assert [len(t) for t in tracks] == [5, 5]
    assert T.segment_camid(659, 600, 60) == 0 and T.segment_camid(660, 600, 60) == 1
