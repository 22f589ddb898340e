"""Issue 16, item 9: ``latent-rag eval --bag CAMERA_BAG`` on a bag without labels or gallery, as a new user runs it.

Real vtest frames in a real rosbag2; small random-weight generator/encoder (CPU budget), real
DeepSORT re-ID and HOG detector. The first half of the bag builds the trusted store, tracks give
identities to the rest; a bag too short for that fails with one line, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
SMALL = ["models.generator=random", "models.latent_encoder=random", "models.random_resolution=32",
         "models.random_channels=16", "models.reid_input_height=128", "models.reid_input_width=64",
         "protector.device=cpu", "protector.m=2", "protector.steps=1"]


def _bag(path: Path, n: int) -> None:
    from latent_rag_ros.datasets import read_video_frames
    from latent_rag_ros.eval.bags import BagPlan, make_bag

    frames = [f for i, f in read_video_frames(VTEST, max_frames=700, frame_step=3) if i >= 600][:n]
    make_bag(BagPlan(frames, path, rate_hz=10 / 3))


def _run(argv: list[str]) -> int:
    from latent_rag_ros.cli import main

    return main(argv)


def test_unlabelled_bag_builds_its_store_and_reports_rank(tmp_path: Path, capsys) -> None:
    _bag(tmp_path / "bag", 16)
    sets = [x for s in SMALL for x in ("--set", s)]
    rc = _run(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "out"), "--recovery-steps", "2",
               "--recovery-size", "32x16", "--comparison-iters", "2", "--quiet", *sets])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "[eval] plan:" in err                      # the plan and estimate, even with --quiet
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("built the trusted store" in n for n in rep["source"]["notes"])
    assert (tmp_path / "out" / "store").is_dir()
    if rep["source"]["labelled"]:                     # people tracked across thirds of the bag
        assert 0.0 <= rep["baselines"]["none"]["utility"]["rank1"] <= 1.0
        assert (tmp_path / "out" / "tracks.png").is_file()


def test_too_short_a_bag_is_one_line(tmp_path: Path, capsys) -> None:
    _bag(tmp_path / "bag", 2)
    rc = _run(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "out"), "--quiet",
               *[x for s in SMALL for x in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("latent-rag eval: ") and "at least 4" in err[-1]
    assert not any("Traceback" in ln for ln in err)
