"""The one configuration schema: ROS parameter files, overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_rag_ros.config import Config, ConfigError, default_config_path, flatten, load_config, parse_overrides


def test_defaults_follow_the_paper() -> None:
    cfg = Config()
    p = cfg.protector
    assert (p.m, p.steps, p.coarse_layers, p.coarse_step, p.fine_step, p.temperature) == (10, 10, 3, 0.001, 0.01, 1.0)
    assert p.scale == 0.0  # 0 means sqrt(d), eq. 3


def test_packaged_parameter_file_loads_and_matches_schema() -> None:
    path = default_config_path()
    assert path is not None and Path(path).is_file()
    cfg = load_config(path)
    assert cfg.ros.camera_topic == "/camera/image_raw"
    assert cfg.ros.camera_qos.reliability == "best_effort"
    assert cfg.ros.egress_topic == "/reid/protected"


def test_ros_parameter_file_blocks_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "/**:\n  ros__parameters:\n    protector: {m: 5}\n    models: {generator: g.pkl}\n"
        "protector_node:\n  ros__parameters:\n    protector.steps: 3\n"
    )
    cfg = load_config(f, {"protector.m": 7})
    assert cfg.protector.m == 7 and cfg.protector.steps == 3
    assert cfg.resolve_path(cfg.models.generator) == str(tmp_path / "g.pkl")
    assert cfg.resolve_path("random") == "random"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"protector.m": 0}, "protector.m"),
        ({"protector.m": "ten"}, "protector.m"),
        ({"protector.schedule": "sideways"}, "protector.schedule"),
        ({"protector.nope": 1}, "protector.nope"),
        ({"protector.temperature": float("nan")}, "temperature"),
        ({"ros.camera_qos.reliability": "sometimes"}, "reliability"),
    ],
)
def test_bad_values_give_clear_errors(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_overrides_parse_and_flatten_roundtrip() -> None:
    assert parse_overrides(["protector.m=5", "models.generator=random", "protector.use_id_loss=false"]) == {
        "protector.m": 5, "models.generator": "random", "protector.use_id_loss": False}
    flat = flatten(Config().to_dict())
    assert flat["ros.output_qos.depth"] == 10 and "base_dir" not in flat
