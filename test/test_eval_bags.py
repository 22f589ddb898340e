"""rosbag2 tools without ROS: real vtest frames round-trip through sqlite3 and mcap bags."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_rag_ros.eval import bags

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(VTEST)
    out = []
    for _ in range(6):
        ok, f = cap.read()
        assert ok, VTEST
        out.append(f)
    cap.release()
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_frames_round_trip(tmp_path: Path, frames: list[np.ndarray], storage: str) -> None:
    labels = [{"boxes": [[10, 20, 74, 148]], "pids": ["0003"], "camid": 2}] * 3 + [None] * 3
    stats = bags.make_bag(bags.BagPlan(frames, tmp_path / "bag", storage=storage, rate_hz=5.0, labels=labels,
                                       start_ns=1_700_000_000_000_000_000))
    assert stats == {"path": str(tmp_path / "bag"), "frames": 6, "labelled": 3,
                     "topic": bags.IMAGE_TOPIC, "storage": storage}
    got = list(bags.read_images(tmp_path / "bag"))
    assert len(got) == len(frames)
    for i, ((t_ns, stamp, img), f) in enumerate(zip(got, frames)):
        assert t_ns == stamp == 1_700_000_000_000_000_000 + i * 200_000_000
        assert img.dtype == np.uint8 and np.array_equal(img, f)
    lab = bags.read_labels(tmp_path / "bag")
    assert sorted(lab) == [got[i][1] for i in range(3)]
    assert lab[got[0][1]]["pids"] == ["0003"] and lab[got[0][1]]["camid"] == 2
    assert bags.bag_topics(tmp_path / "bag") == {bags.IMAGE_TOPIC: bags.IMAGE_TYPE, bags.LABEL_TOPIC: bags.STRING_TYPE}
    # the bare storage file (no metadata.yaml beside it) is readable too
    suffix = ".db3" if storage == "sqlite3" else ".mcap"
    bare = tmp_path / f"bare{suffix}"
    shutil.copy(next((tmp_path / "bag").glob(f"*{suffix}")), bare)
    again = list(bags.read_images(bare))
    assert all(np.array_equal(a[2], f) for a, f in zip(again, frames))
    assert bags.read_labels(bare) == lab
    with pytest.raises(bags.BagError, match="no topic"):
        list(bags.read_images(tmp_path / "bag", topic="/nope"))
    with pytest.raises(bags.BagError, match="exists already"):
        bags.make_bag(bags.BagPlan(frames, tmp_path / "bag", storage=storage))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_read_protected_decodes_raw_cdr(tmp_path: Path, frames: list[np.ndarray], storage: str) -> None:
    ts = bags.typestore()
    crop = np.ascontiguousarray(frames[0][100:228, 300:364])
    emb = np.random.default_rng(0).normal(size=16).astype(np.float32)
    emb /= np.linalg.norm(emb)
    with bags.BagRecorder(tmp_path / "prot", storage) as rec:
        conn = rec.add_topic(bags.PROTECTED_TOPIC, bags.PROTECTED_TYPE)
        for k in range(2):
            msg = bags.protected_message(
                crop[:, ::-1].copy() if k else crop, emb, 5_000_000_000 + k, box=(300, 100, 64, 128),
                label=f"000{k}", track_id=7, store_version="v3", m=10, steps=10, embedding_model="mnv2",
                timings_ms={"retrieve": 1.5, "generate": 250.0})
            rec.write(conn, 6_000_000_000 + k, ts.serialize_cdr(msg, bags.PROTECTED_TYPE))  # raw CDR bytes
    recs = bags.read_protected(tmp_path / "prot")
    assert len(recs) == 2
    r = recs[0]
    assert np.array_equal(r["image"], crop) and np.array_equal(recs[1]["image"], crop[:, ::-1])
    np.testing.assert_array_equal(r["embedding"], emb)
    assert (r["t_ns"], r["stamp_ns"], r["box"], r["label"], r["track_id"]) == (
        6_000_000_000, 5_000_000_000, (300, 100, 64, 128), "0000", 7)
    assert (r["store_version"], r["m"], r["steps"], r["embedding_model"]) == ("v3", 10, 10, "mnv2")
    assert r["timings_ms"] == {"retrieve": 1.5, "generate": 250.0}
    with pytest.raises(bags.BagError, match="no topic"):
        bags.read_protected(tmp_path / "prot", topic="/other")


def test_package_types_registered() -> None:
    types = bags.typestore().types
    for name in ("PersonCrop", "PersonCrops", "ProtectedCrop"):
        assert f"latent_rag_ros/msg/{name}" in types
    # RIHS01 hash of the custom type is stable and well-formed (what rosbag2 metadata records)
    h = bags.typestore().hash_rihs01(bags.PROTECTED_TYPE)
    assert h.startswith("RIHS01_") and len(h) == 7 + 64


def test_make_bag_cli_from_a_labelled_dataset(tmp_path: Path, frames: list[np.ndarray]) -> None:
    from latent_rag_ros.cli import main
    from latent_rag_ros.datasets import open_source

    root = tmp_path / "market"
    for d in ("query", "bounding_box_test"):
        (root / d).mkdir(parents=True)
    crops = [np.ascontiguousarray(frames[k][200:328, 250 + 40 * k:314 + 40 * k]) for k in range(3)]
    cv2.imwrite(str(root / "query" / "0001_c1s1_000001_00.png"), crops[0])
    cv2.imwrite(str(root / "bounding_box_test" / "0001_c2s1_000002_00.png"), crops[1])
    cv2.imwrite(str(root / "bounding_box_test" / "0002_c2s1_000003_00.png"), crops[2])
    assert main(["make-bag", "--input", str(root), "--out", str(tmp_path / "bag"), "--storage", "mcap",
                 "--quiet"]) == 0
    back = list(open_source(tmp_path / "bag"))
    assert sorted((s.pid, s.camid, s.image.shape) for s in back) == [
        ("0001", 1, (128, 64, 3)), ("0001", 2, (128, 64, 3)), ("0002", 2, (128, 64, 3))]
    assert any(np.array_equal(s.image, crops[2]) for s in back)  # PNG + bgr8: lossless end to end
    assert main(["make-bag", "--input", str(root), "--out", str(tmp_path / "q"), "--split", "query",
                 "--quiet"]) == 0
    assert [s.pid for s in open_source(tmp_path / "q")] == ["0001"]
