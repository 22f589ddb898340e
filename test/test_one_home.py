"""One home per fact (issue #12 item 2): file I/O, registries, the source/detector rule, training flags,
topic defaults and the generation options each live in one place, and the copies that used them agree."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_rag_ros import config, fileio
from latent_rag_ros.cli import build_parser
from latent_rag_ros.cli.training import config_flags
from latent_rag_ros.config import ConfigError, load_config
from latent_rag_ros.core.generation import StepOptions
from latent_rag_ros.datasets import needs_detector
from latent_rag_ros.eval.bags import BagPlan, make_bag
from latent_rag_ros.models.detectors import DETECTOR_FACTORIES, load_detector
from latent_rag_ros.models.reid import REID_FACTORIES, load_reid
from latent_rag_ros.training.encoder import EncoderTrainConfig
from latent_rag_ros.training.generator import GeneratorTrainConfig


def test_sha256_file_and_digest_match_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)   # spans several read chunks
    p = tmp_path / "w.bin"
    p.write_bytes(data)
    assert fileio.sha256_file(p) == hashlib.sha256(data).hexdigest()
    # the short digest in stored fingerprints keeps its format: sha256 of the first `limit` bytes, 16 hex
    assert fileio.file_digest(p) == hashlib.sha256(data).hexdigest()[:16]
    assert fileio.file_digest(p, limit=1000) == hashlib.sha256(data[:1000]).hexdigest()[:16]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.txt"
    fileio.atomic_write_text(p, "old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(p, broken)
    assert p.read_text() == "old"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.txt"]   # no temporary file left behind
    fileio.atomic_write_bytes(p, b"secret", mode=0o600)
    assert p.read_bytes() == b"secret" and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    rec = fileio.atomic_write_chunks(tmp_path / "snap", [b"ab", memoryview(b"cd")])
    assert rec == {"name": "snap", "sha256": hashlib.sha256(b"abcd").hexdigest(), "bytes": 4}


def test_registries_match_the_schema_and_name_the_kinds() -> None:
    assert tuple(REID_FACTORIES) == config.REID_KINDS
    assert tuple(DETECTOR_FACTORIES) == config.DETECTOR_KINDS
    with pytest.raises(ValueError, match="deepsort_mobilenetv2, bagtricks, agw, torchreid"):
        load_reid("resnet9000")
    with pytest.raises(ValueError, match="hog, onnx"):
        load_detector("ssd")
    with pytest.raises(ConfigError, match=r"models\.reid"):
        load_config(None, {"models.reid": "resnet9000"})
    with pytest.raises(ConfigError, match=r"detector\.kind"):
        load_config(None, {"detector.kind": "ssd"})


def test_the_source_detector_rule(tmp_path: Path) -> None:
    frame = np.zeros((64, 48, 3), np.uint8)
    crops = tmp_path / "crops"
    crops.mkdir()
    cv2.imwrite(str(crops / "a.png"), frame)
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 64))
    writer.write(frame)
    writer.release()
    bag = tmp_path / "bag"
    make_bag(BagPlan([frame], bag))
    assert needs_detector(video) and needs_detector(bag)
    assert not needs_detector(crops)


@pytest.mark.parametrize(("command", "cls"), [("generator", GeneratorTrainConfig), ("encoder", EncoderTrainConfig)])
def test_training_flags_come_from_the_dataclass_fields(command: str, cls: type) -> None:
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                 if getattr(a, "choices", None) and command in a.choices).choices[command]
    options = {s for a in train._actions for s in a.option_strings}
    scalar = [f.name for f in dataclasses.fields(cls) if f.name in config_flags(cls)]
    assert scalar and len(scalar) >= len(dataclasses.fields(cls)) - 3   # all but the list fields
    for name in scalar:
        assert "--" + name.replace("_", "-") in options, name
    last = scalar[-1]
    value = {int: "3", float: "0.5", str: "cpu"}[config_flags(cls)[last]]
    extra = ["--generator", "g.pkl"] if command == "encoder" else []
    args = parser.parse_args(["train", command, "--data", "d", "--out", "o", *extra, "--" + last.replace("_", "-"),
                              value])
    assert str(getattr(args, last)) in (value, str(float(value)) if value[0].isdigit() else value)


def test_topic_defaults_live_in_config() -> None:
    from latent_rag_ros import bagio
    from latent_rag_ros.nodes.replay import ReplayPlan

    ros = config.RosConfig()
    defaults = {f.name: f.default for f in dataclasses.fields(ReplayPlan)}
    assert defaults["camera_topic"] == config.ros_name(ros.camera_topic) == config.CAMERA_TOPIC
    assert defaults["egress_topic"] == ros.egress_topic == bagio.PROTECTED_TOPIC
    assert defaults["wait_subscribed"] == (config.ros_name(ros.crops_topic),)
    assert bagio.IMAGE_TOPIC == config.BAG_CAMERA_TOPIC and bagio.LABEL_TOPIC == config.LABEL_TOPIC


def test_generation_options_are_the_protector_config() -> None:
    assert StepOptions is config.ProtectorConfig
    cfg = load_config(None, {"protector.steps": 3, "protector.schedule": "alternating"})
    from latent_rag_ros.core.generation import check_schedule, effective_momentum

    check_schedule(cfg.protector)
    assert effective_momentum(cfg.protector) == 0.0 and cfg.protector.steps == 3
