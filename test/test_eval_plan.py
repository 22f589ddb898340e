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
