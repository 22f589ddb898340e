"""Issue 12 item 5: EvalPlan, ReplayPlan, BuildPlan and BagPlan refuse a bad field in one line naming it.

Cheap: no graph is started, no model is loaded (TinyReID is the test re-ID network of nets.py), and
each refused plan leaves nothing on disk. What the plans run is tested in test_eval_bags.py,
test_store_build.py, test_eval_runner.py and test_graph_e2e.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.cli import main
from latent_rag_ros.eval.bags import BagPlan, make_bag
from latent_rag_ros.eval.runner import EvalPlan, run_eval
from latent_rag_ros.nodes.replay import ReplayPlan
from latent_rag_ros.plans import PlanError
from latent_rag_ros.store.build import BuildPlan, build_store

from nets import TinyReID


class _Encoder:
    """A latent encoder stand-in: the plan only checks that it is callable (nothing is inverted here)."""

    def __call__(self, images):  # pragma: no cover - never called by a refused plan
        raise AssertionError("a refused plan must not run the encoder")


def _one_line(exc: pytest.ExceptionInfo[PlanError], field: str) -> str:
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(field + " must be "), msg
    assert isinstance(exc.value, ValueError)  # callers catching ValueError keep working
    return msg


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    frames = [np.full((48, 64, 3), i * 40, np.uint8) for i in range(3)]
    make_bag(BagPlan(frames, tmp_path / "in", start_ns=10**18))
    return tmp_path / "in"


@pytest.mark.parametrize(("change", "field"), [
    ({"rate": 0.0}, "ReplayPlan.rate"),
    ({"rate": float("nan")}, "ReplayPlan.rate"),
    ({"storage": "parquet"}, "ReplayPlan.storage"),
    ({"drain_s": -1.0}, "ReplayPlan.drain_s"),
    ({"discovery_timeout": "soon"}, "ReplayPlan.discovery_timeout"),
    ({"camera_topic": ""}, "ReplayPlan.camera_topic"),
    ({"source_topic": 3}, "ReplayPlan.source_topic"),
    ({"wait_subscribed": ("/a", "")}, "ReplayPlan.wait_subscribed"),
])
def test_replay_plan_refuses_a_bad_field(bag: Path, tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(PlanError) as exc:
        ReplayPlan(bag, tmp_path / "out", **change)
    msg = _one_line(exc, field)
    assert repr(next(iter(change.values())))[:20] in msg   # says what it got


def test_replay_plan_checks_the_bags_before_the_graph(bag: Path, tmp_path: Path) -> None:
    with pytest.raises(PlanError) as exc:
        ReplayPlan(tmp_path / "missing", tmp_path / "out")
    assert "missing" in _one_line(exc, "ReplayPlan.bag_in")
    with pytest.raises(PlanError) as exc:
        ReplayPlan(bag, bag)     # would be found only after the whole replay, when the recorder opens
    assert "never overwritten" in _one_line(exc, "ReplayPlan.bag_out")
    plan = ReplayPlan(str(bag), tmp_path / "out", wait_subscribed=["/x"])
    assert plan.wait_subscribed == ("/x",)    # a list from a caller is kept as the tuple the field holds
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rate = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(("change", "field"), [
    ({"batch_size": 0}, "BuildPlan.batch_size"),
    ({"batch_size": 2.5}, "BuildPlan.batch_size"),
    ({"backend": "redis"}, "BuildPlan.backend"),
    ({"image_size": (256,)}, "BuildPlan.image_size"),
    ({"image_size": (256, -1)}, "BuildPlan.image_size"),
    ({"built_with": "tiny"}, "BuildPlan.built_with"),
    ({"store_opts": ["key_file"]}, "BuildPlan.store_opts"),
    ({"samples": "crops/"}, "BuildPlan.samples"),
    ({"reid": object()}, "BuildPlan.reid"),
    ({"latent_encoder": None}, "BuildPlan.latent_encoder"),
    ({"out": ""}, "BuildPlan.out"),
])
def test_build_plan_refuses_a_bad_field(tmp_path: Path, change: dict, field: str) -> None:
    args = {"samples": [], "out": tmp_path / "s", "reid": TinyReID(dim=8), "latent_encoder": _Encoder(), **change}
    with pytest.raises(PlanError) as exc:
        BuildPlan(**args)
    _one_line(exc, field)
    assert not (tmp_path / "s").exists()


def test_build_plan_keeps_models_out_of_its_repr(tmp_path: Path) -> None:
    plan = BuildPlan([], tmp_path / "s", TinyReID(dim=8), _Encoder(), image_size=[64, 32])
    assert plan.image_size == (64, 32) and "Conv2d" not in repr(plan) and "batch_size=16" in repr(plan)
    stats = build_store(plan)   # an empty source builds nothing and creates no store
    assert stats["added"] == 0 and stats["size"] == 0 and not (tmp_path / "s").exists()


@pytest.mark.parametrize(("change", "field"), [
    ({"rate_hz": 0}, "BagPlan.rate_hz"),
    ({"rate_hz": float("inf")}, "BagPlan.rate_hz"),
    ({"storage": "db3"}, "BagPlan.storage"),
    ({"split": "test"}, "BagPlan.split"),
    ({"start_ns": -1}, "BagPlan.start_ns"),
    ({"labels": {"pids": ["1"]}}, "BagPlan.labels"),
    ({"topic": " "}, "BagPlan.topic"),
    ({"frame_id": None}, "BagPlan.frame_id"),
    ({"source": None}, "BagPlan.source"),
])
def test_bag_plan_refuses_a_bad_field(tmp_path: Path, change: dict, field: str) -> None:
    args = {"source": [np.zeros((8, 8, 3), np.uint8)], "out": tmp_path / "bag", **change}
    with pytest.raises(PlanError) as exc:
        BagPlan(**args)
    _one_line(exc, field)
    assert not (tmp_path / "bag").exists()


def test_cli_reports_a_bad_plan_field_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = tmp_path / "crops"
    frames.mkdir()
    code = main(["make-bag", "--input", str(frames), "--out", str(tmp_path / "bag"), "--rate", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "BagPlan.rate_hz must be a finite number > 0, got 0.0" in err, err
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize(("change", "field"), [
    ({"source": ""}, "EvalPlan.source"),
    ({"recovery_steps": -1}, "EvalPlan.recovery_steps"),
    ({"max_queries": 0}, "EvalPlan.max_queries"),
    ({"max_attack": 2.5}, "EvalPlan.max_attack"),
    ({"grid_columns": 0}, "EvalPlan.grid_columns"),
    ({"recovery_model": ""}, "EvalPlan.recovery_model"),
])
def test_eval_plan_refuses_a_bad_field_before_any_work(tmp_path: Path, change: dict, field: str) -> None:
    args = {"source": str(tmp_path), "out_dir": tmp_path / "out", **change}
    with pytest.raises(PlanError) as exc:
        EvalPlan(**args)
    _one_line(exc, field)
    with pytest.raises(PlanError):
        run_eval(None, args.pop("source"), args.pop("out_dir"), **args)
    assert not (tmp_path / "out").exists()
    ok = EvalPlan(str(tmp_path), tmp_path / "out", max_attack=0, recovery_steps=0)   # 0: no attacker training
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.max_queries = 3  # type: ignore[misc]
