"""Issue 12 item 5: the evaluation is a pipeline of stages driven by one EvalPlan (behaviour: test_eval_*)."""

from __future__ import annotations

import dataclasses

import pytest


def test_stages_run_in_the_pipeline_order() -> None:
    from latent_rag_ros.eval.runner import STAGES

    assert [s.__name__ for s in STAGES] == ["load_stage", "embed_stage", "protect_stage", "measure_stage",
                                            "sweep_stage", "extras_stage"]


def test_run_eval_options_are_the_plan_fields(tmp_path) -> None:
    from latent_rag_ros.eval.runner import EvalPlan, run_eval

    names = {f.name for f in dataclasses.fields(EvalPlan)}
    assert {"source", "out_dir", "cfg", "comparisons", "recovery", "store_path", "ablation"} <= names
    with pytest.raises(TypeError, match="EvalPlan fields: source, out_dir"):
        run_eval(None, str(tmp_path), tmp_path / "out", recovery_stepz=3)   # a typo is named, nothing runs
    assert not (tmp_path / "out").exists()


def test_extra_backbone_without_path_gets_its_own_weights(tmp_path) -> None:
    """``--reid deepsort_mobilenetv2`` beside a fine-tuned MobileNetV2 is the ImageNet one, not a second copy."""
    from types import SimpleNamespace

    import numpy as np

    from latent_rag_ros.cli.demo import DEMO_REID
    from latent_rag_ros.config import load_config
    from latent_rag_ros.eval.runner import EvalPlan, _start, embed_stage
    from latent_rag_ros.models.factory import build_reid

    cfg = load_config(None, {**DEMO_REID, "protector.device": "cpu"})
    run = _start(EvalPlan(source=str(tmp_path), out_dir=tmp_path / "out", cfg=cfg, reid_names="deepsort_mobilenetv2",
                          progress=False))
    run.models = SimpleNamespace(reid=build_reid(cfg, "cpu"))
    img = np.random.default_rng(0).integers(0, 256, (96, 40, 3), dtype=np.uint8)
    run.data = SimpleNamespace(query=[img], gallery=[], labelled=False)
    embed_stage(run)
    names = [bb.name for bb in run.backbones]
    assert names == ["deepsort_mobilenetv2@reid_mobilenetv2.pt", "deepsort_mobilenetv2"]
    assert not np.allclose(run.backbones[0].original, run.backbones[1].original, atol=1e-3)
