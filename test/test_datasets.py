"""Dataset readers: Market-1501 / MSMT17 / CUHK03 layouts, crop folders, video and bag sources."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_rag_ros import datasets as D

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def _img(seed: int, h: int = 32, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_market_layout(tmp_path: Path) -> None:
    root = tmp_path / "Market-1501-v15.09.15"
    files = {
        "query/0002_c1s1_000451_03.jpg": 1,
        "bounding_box_test/0002_c2s1_000100_01.jpg": 2,
        "bounding_box_test/0000_c3s1_000002_00.jpg": 3,   # distractor: kept
        "bounding_box_test/-1_c2s1_000001_00.jpg": 4,     # junk: skipped
        "bounding_box_train/0007_c6s2_000010_02.jpg": 5,
    }
    for rel, seed in files.items():
        _write(root / rel, _img(seed))
    assert D.source_kind(tmp_path) == "market"  # found one level down
    q, g = D.market_query_gallery(tmp_path)
    assert [(e.pid, e.camid) for e in q] == [("0002", 1)]
    assert sorted((e.pid, e.camid) for e in g) == [("0000", 3), ("0002", 2)]
    gallery = list(D.open_source(tmp_path, split="gallery"))
    assert all(s.image.dtype == np.uint8 and s.image.shape == (32, 16, 3) for s in gallery)
    png_like = cv2.imread(str(root / "bounding_box_test/0002_c2s1_000100_01.jpg"))
    assert any(np.array_equal(s.image, png_like) for s in gallery)
    everything = list(D.open_source(tmp_path))
    names = [s.name for s in everything]
    assert len(names) == len(set(names)) == 4
    assert D.parse_market_name("0002_c1s1_000451_03.jpg") == ("0002", 1)
    assert D.parse_market_name("readme.txt") is None
    with pytest.raises(D.DatasetError, match="unknown split"):
        D.list_split(tmp_path, "val")


def test_msmt17_layout(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    _write(root / "train/0000/0000_000_01_0303morning_0015_0.jpg", _img(1))
    _write(root / "test/0000/0000_000_14_0303morning_0015_0.jpg", _img(2))
    _write(root / "test/0000/0000_001_03_0303noon_0100_1.jpg", _img(3))
    (root / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (root / "list_query.txt").write_text("0000/0000_000_14_0303morning_0015_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_001_03_0303noon_0100_1.jpg 0\n")
    assert D.source_kind(root) == "msmt17"
    q = D.list_split(root, "query")
    g = D.list_split(root, "gallery")
    t = D.list_split(root, "train")
    assert [(e.pid, e.camid) for e in q] == [("0000", 14)]
    assert [(e.pid, e.camid) for e in g] == [("0000", 3)]
    assert [(e.pid, e.camid) for e in t] == [("t0000", 1)]  # train identities are a separate set
    assert len(list(D.open_source(root, split="query"))) == 1
    (root / "list_query.txt").write_text("garbage\n")
    with pytest.raises(D.DatasetError, match=r"list_query\.txt:1"):
        D.list_split(root, "query")


def test_cuhk03_layout(tmp_path: Path) -> None:
    root = tmp_path / "cuhk03"
    names = ["1_001_1_01.png", "1_001_2_06.png", "2_005_1_01.png", "2_005_2_07.png"]
    for i, n in enumerate(names):
        _write(root / "images_detected" / n, _img(i))
    assert D.source_kind(root) == "cuhk03"
    assert len(D.list_split(root, None)) == 4
    with pytest.raises(D.DatasetError, match=r"splits_new_detected\.json"):
        D.list_split(root, "query")
    split = [{"train": [], "query": [[f"/elsewhere/{names[0]}", 0, 0], [f"/x/{names[2]}", 1, 2]],
              "gallery": [[f"/x/{names[1]}", 0, 1], [f"/x/{names[3]}", 1, 3]]}]
    (root / "splits_new_detected.json").write_text(json.dumps(split))
    q = D.list_split(root, "query")
    g = D.list_split(root, "gallery")
    assert [(e.pid, e.camid) for e in q] == [("1_001", 1), ("2_005", 3)]
    assert [(e.pid, e.camid) for e in g] == [("1_001", 2), ("2_005", 4)]


def test_plain_folders(tmp_path: Path) -> None:
    for pid in ("alice", "bob"):
        for k in range(2):
            _write(tmp_path / "ids" / pid / f"{k}.png", _img(k + len(pid)))
    samples = list(D.open_source(tmp_path / "ids"))
    assert sorted((s.name, s.pid) for s in samples) == [
        ("alice/0.png", "alice"), ("alice/1.png", "alice"), ("bob/0.png", "bob"), ("bob/1.png", "bob")]
    _write(tmp_path / "flat" / "a.png", _img(9))
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = list(D.open_source(tmp_path / "flat"))
    assert [(s.name, s.pid, s.camid) for s in flat] == [("a.png", None, None)]
    with pytest.raises(D.DatasetError, match="no 'query' split"):
        D.list_split(tmp_path / "flat", "query")
    (tmp_path / "flat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(D.DatasetError, match=r"broken\.jpg"):
        list(D.open_source(tmp_path / "flat"))


def test_crop_helper() -> None:
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    c = D.crop(frame, (10, 5, 20, 15))
    assert c.shape == (10, 10, 3) and np.array_equal(c, frame[5:15, 10:20])
    padded = D.crop(frame, (10, 5, 20, 15), pad=0.5)
    assert padded.shape == (20, 20, 3)  # clipped at the top edge: rows 0..20
    assert D.crop(frame, (-5, -5, 100, 100)).shape == frame.shape
    with pytest.raises(ValueError, match="empty crop"):
        D.crop(frame, (40, 5, 50, 10))


def test_video_needs_detector_and_yields_named_crops() -> None:
    from latent_rag_ros.models.detectors import load_detector

    with pytest.raises(D.DatasetError, match="detector"):
        list(D.open_source(VTEST))
    det = load_detector("hog", upscale=1.0, min_score=0.0)
    samples = list(D.open_source(VTEST, detector=det, max_frames=3))
    assert samples, "HOG finds the walking people of vtest.avi"
    assert all(s.name.startswith("vtest.avi#f00000") and "_b" in s.name for s in samples)
    assert {s.frame for s in samples} <= {0, 1, 2}
    one = list(D.open_source(VTEST, detector=det, max_frames=3, max_crops=1, pad=0.1))
    assert len(one) == len({s.frame for s in samples}) and all(s.name.endswith("_b0") for s in one)
    frames = dict(D.read_video_frames(VTEST, max_frames=3))
    for s in samples:
        assert np.array_equal(s.image, D.crop(frames[s.frame], s.box))


def test_bag_source_carries_labels(tmp_path: Path) -> None:
    from latent_rag_ros.eval.bags import BagPlan, make_bag

    cap = cv2.VideoCapture(VTEST)
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    boxes = [[100.0, 50.0, 164.0, 178.0], [300.0, 200.0, 364.0, 328.0]]
    labels = [{"boxes": boxes, "pids": ["0001", "0002"], "camid": 4}] * 2 + [None]
    make_bag(BagPlan(frames, tmp_path / "cam", labels=labels, start_ns=10**18))
    samples = list(D.open_source(tmp_path / "cam"))
    # two labelled frames -> 2 crops each; the unlabelled frame -> the whole frame
    assert [(s.pid, s.camid, s.frame) for s in samples] == [
        ("0001", 4, 0), ("0002", 4, 0), ("0001", 4, 1), ("0002", 4, 1), (None, None, 2)]
    assert np.array_equal(samples[0].image, frames[0][50:178, 100:164])
    assert samples[-1].image.shape == frames[2].shape

    class BoxDetector:  # a detector that finds the first labelled box slightly shifted, plus a stranger
        def detect(self, frame):
            return (np.array([[102, 52, 166, 180], [500, 10, 560, 130]], np.float32), np.array([0.9, 0.8], np.float32))

    det = list(D.open_source(tmp_path / "cam", detector=BoxDetector()))
    assert [(s.pid, s.frame) for s in det[:2]] == [("0001", 0), (None, 0)]
    db3 = next((tmp_path / "cam").glob("*.db3"))
    assert D.is_bag(db3)
