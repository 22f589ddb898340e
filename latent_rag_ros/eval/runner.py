"""``run_eval``: the paper's evaluation (Tables I-V, Fig. 6-7) on a dataset, a video or a bag, as a pipeline.

Protocol (paper IV-A): protection applies to QUERIES only; gallery features come from the RAW
gallery images; the trusted store is built from the gallery split. Privacy = SSIM/PSNR of the
protected queries against their originals; utility = Rank-1/mAP of protected queries against the
raw gallery (standard Market-1501 protocol) for one or more re-ID backbones, plus the cosine of
each protected image's embedding with its original's; recovery = a restoration network trained on
(protected, original) pairs of a split disjoint from the queries, judged on the queries.
The same is measured for the baselines (none, Gaussian blur, mosaic) and the comparison methods
(PixelFade, AVIH). How each kind of source is split: :mod:`latent_rag_ros.eval.sources`; how
every image is measured: :mod:`latent_rag_ros.eval.measure`.

An :class:`EvalPlan` says what to run; :func:`run_plan` runs its stages in order, each reading and
filling one :class:`_Run`: ``load`` -> ``embed`` -> ``protect`` -> ``measure`` (privacy, utility,
recovery per method) -> ``sweeps`` -> ``extras`` (Table IV ablations, Table V costs) -> ``report``.
The module is a little over 500 lines because the stages stay together, in the order they run, so
the pipeline reads top to bottom in one file.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_rag_ros import plans
from latent_rag_ros.eval import measure
from latent_rag_ros.eval.baselines import BASELINES, apply_baseline
from latent_rag_ros.eval.measure import Backbone, embed_crops, embed_published, parse_reid_list, published
from latent_rag_ros.eval.recovery import RecoveryConfig, identity_result, recovery_attack
from latent_rag_ros.eval.report import file_record, write_json, write_markdown
from latent_rag_ros.eval.sources import EvalData, load_eval_data

__all__ = ["EvalData", "EvalPlan", "embed_crops", "embed_published", "load_eval_data", "parse_reid_list",
           "parse_sweeps", "published", "run_eval", "run_plan"]

SWEEP_KEYS = {"m": "protector.m", "T": "protector.steps"}


@dataclass(frozen=True)
class EvalPlan:
    """What one evaluation runs (the fields were ``run_eval``'s keyword parameters); a bad field raises PlanError.

    ``cfg``: a Config, or a config file path / None (then ``overrides`` apply). ``reid_names``: extra
    backbones ``kind[:path]`` judged on the same protected queries (Table II). ``sweeps``: e.g.
    ``["m=1,5,10,20", "T=0,5,10,20"]``. ``ablation``: Table IV on the first ``ablation_queries``
    queries (all when None); ``table_v``: parameters, FLOPs and time per stage on one crop.
    ``comparisons``: PixelFade / AVIH (:mod:`latent_rag_ros.eval.comparisons`) under the primary
    backbone, with ``comparison_params[name]`` overriding their solver settings (e.g. ``{"iters": 30}``).
    ``recovery_model``/``recovery_steps`` override ``recovery``'s; ``store_path``: use this trusted
    store (else one is built from the gallery split).
    """

    source: str | Path
    out_dir: str | Path
    cfg: Any = None
    overrides: dict[str, Any] | None = None
    models: Any = None
    reid_names: str | Sequence[str] | None = None
    sweeps: Any = None
    recovery_steps: int = 500
    recovery_model: str = "unet"
    recovery: RecoveryConfig | None = None
    max_queries: int | None = None
    max_gallery: int | None = None
    max_attack: int | None = 256
    protected_bag: str | Path | None = None
    store_path: str | Path | None = None
    baselines: Sequence[str] = BASELINES
    baseline_params: dict[str, dict[str, Any]] | None = None
    comparisons: Sequence[str] = ()
    comparison_params: dict[str, dict[str, Any]] | None = None
    ablation: bool = False
    ablation_queries: int | None = None
    table_v: bool = True
    grid_columns: int = 6
    progress: bool = True
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        plans.path(self, "source")
        plans.path(self, "out_dir")
        plans.at_least(self, "recovery_steps", 0)
        plans.text(self, "recovery_model")
        plans.at_least(self, "max_queries", 1, optional=True)
        plans.at_least(self, "max_gallery", 0, optional=True)
        plans.at_least(self, "max_attack", 0, optional=True)
        plans.at_least(self, "ablation_queries", 1, optional=True)
        plans.at_least(self, "grid_columns", 1)


@dataclass
class _Run:
    """The state the stages share: resolved config, data, backbones, protected images and results."""

    plan: EvalPlan
    cfg: Any
    cfg_path: str | None
    device: Any
    out: Path
    say: Callable[[str], Any]
    rcfg: RecoveryConfig
    models: Any = None
    data: Any = None
    backbones: list[Backbone] = field(default_factory=list)
    primary_name: str = ""
    store: Any = None
    store_path: str | Path | None = None
    protector: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    lr_embeddings: np.ndarray | None = None
    protected_sets: dict[str, list[np.ndarray]] = field(default_factory=dict)
    attack_sets: dict[str, list[np.ndarray]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    recovered: dict[str, list[np.ndarray]] = field(default_factory=dict)
    sweep_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ablation_rows: list[dict[str, Any]] = field(default_factory=list)
    cost_rows: list[dict[str, Any]] = field(default_factory=list)
    t_all: float = 0.0


# ------------------------------------------------------------------------------------ protection


def _protect_all(protector: Any, crops: Sequence[np.ndarray], store: Any, progress: bool,
                 desc: str = "protect", labels: Sequence[str | None] | None = None,
                 ) -> tuple[list[np.ndarray], np.ndarray, dict[str, float]]:
    """Protect crops in batches with the real Protector; returns (BGR crops, embeddings, summed timings).

    ``labels`` (the crops' pids) let ``protector.exclude_same_label`` drop the query's own identity.
    """
    from latent_rag_ros.core.protector import merge_results

    bs = int(protector.cfg.batch_size)
    starts: Sequence[int] = range(0, len(crops), bs)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, disable=None)
    images: list[np.ndarray] = []
    parts = []
    for s in starts:
        ex = list(labels[s:s + bs]) if labels is not None else None
        prot, result = protector.protect_crops(list(crops[s:s + bs]), store, exclude_labels=ex)
        images.extend(prot)
        parts.append(result)
    merged = merge_results(parts)
    return images, merged.embeddings.detach().float().cpu().numpy(), dict(merged.timings_ms)


# ---------------------------------------------------------------------------------- configuration


def _resolve_cfg(cfg: Any, overrides: dict[str, Any] | None) -> tuple[Any, str | None]:
    from latent_rag_ros.config import Config, load_config

    if isinstance(cfg, Config):
        return cfg, None
    return load_config(cfg, overrides), (str(cfg) if cfg else None)


def _sweep_cfg(cfg: Any, cfg_path: str | None, overrides: dict[str, Any] | None, key: str, value: Any) -> Any:
    """The config of one sweep point: the run's file and overrides plus ``key=value``."""
    from latent_rag_ros.config import load_config

    if cfg_path is not None or overrides:
        return load_config(cfg_path, {**(overrides or {}), key: value})
    section, _, name = key.partition(".")
    if section != "protector" or not name or not hasattr(cfg.protector, name):
        raise ValueError(f"sweep key {key!r}: only protector.* keys can be swept on a Config object")
    current = getattr(cfg.protector, name)
    value = type(current)(value)
    if name in ("m", "steps") and value < (1 if name == "m" else 0):
        raise ValueError(f"sweep {key}={value}: out of range")
    return dataclasses.replace(cfg, protector=dataclasses.replace(cfg.protector, **{name: value}))


def parse_sweeps(items: Sequence[str] | dict[str, Sequence[Any]] | None) -> dict[str, list[Any]]:
    """``["m=1,5,10", "T=0,10"]`` -> ``{"m": [1, 5, 10], "T": [0, 10]}`` (values parsed as YAML scalars)."""
    import yaml

    if not items:
        return {}
    if isinstance(items, dict):
        return {k: list(v) for k, v in items.items()}
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"sweep {item!r}: expected KEY=V1,V2,...")
        out[key.strip()] = [yaml.safe_load(v) for v in values.split(",") if v.strip()]
    return out


def _model_records(cfg: Any, models: Any, backbones: list[Backbone]) -> dict[str, Any]:
    recs: dict[str, Any] = {}
    for key in ("generator", "latent_encoder"):
        spec = getattr(cfg.models, key)
        rec = file_record(cfg.resolve_path(spec))
        rec["source"] = (getattr(models, "sources", {}) or {}).get(key, spec)
        recs[key] = rec
    for bb in backbones:
        recs[f"reid:{bb.name}"] = bb.source
    return recs


# ----------------------------------------------------------------------------------------- stages


def _start(plan: EvalPlan) -> _Run:
    """Resolve the config, device, output folder, logger and attacker settings."""
    from latent_rag_ros.core.protector import resolve_device

    say = plan.log or (lambda msg: print(f"[eval] {msg}", flush=True) if plan.progress else None)
    cfg, cfg_path = _resolve_cfg(plan.cfg, plan.overrides)
    device = resolve_device(cfg.protector.device)
    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rcfg = dataclasses.replace(plan.recovery or RecoveryConfig(), model=plan.recovery_model,
                               steps=plan.recovery_steps, seed=cfg.protector.seed)
    if plan.recovery is None or plan.recovery.device == "cpu":
        rcfg.device = str(device)  # train the attacker where the protector runs
    return _Run(plan, cfg, cfg_path, device, out, say, rcfg, store_path=plan.store_path, t_all=time.perf_counter())


def load_stage(run: _Run) -> None:
    """Models, and the queries / gallery / attacker splits of the source (tracks label unlabelled ones)."""
    from latent_rag_ros.datasets import needs_detector
    from latent_rag_ros.models.factory import build_detector, build_models

    plan, cfg = run.plan, run.cfg
    t = time.perf_counter()
    run.models = plan.models if plan.models is not None else build_models(
        cfg, run.device, with_encoder=plan.protected_bag is None or plan.ablation)
    detector = getattr(run.models, "detector", None)
    if detector is None and needs_detector(plan.source):
        detector = build_detector(cfg)   # unlabelled videos and bags get identities from tracks
    run.data = load_eval_data(plan.source, plan.max_queries, plan.max_gallery, plan.max_attack, plan.protected_bag,
                              detector, cfg.protector.seed, det_cfg=cfg.detector, sheet=run.out / "tracks.png",
                              store_fraction=0.0 if plan.store_path is not None else 0.5)
    run.wall["load"] = time.perf_counter() - t
    data = run.data
    run.say(f"{data.kind}: {len(data.query)} queries, {len(data.gallery)} gallery, {len(data.attack)} attacker crops"
            + (f" ({'; '.join(data.notes)})" if data.notes else ""))


def embed_stage(run: _Run) -> None:
    """The backbones (primary + extra) and their features of the raw queries and raw gallery."""
    from latent_rag_ros.models.factory import build_reid

    cfg, models, data = run.cfg, run.models, run.data
    run.primary_name = getattr(models.reid, "name", cfg.models.reid)
    own = cfg.models.reid_path or None
    run.backbones = [Backbone(run.primary_name + (f"@{Path(own).name}" if own else ""), models.reid,
                              measure.reid_source(cfg.models.reid, own))]
    for kind, path in parse_reid_list(run.plan.reid_names):
        if kind == cfg.models.reid and path == own:   # the primary backbone itself
            continue
        net = build_reid(cfg, run.device, kind=kind, path=path or "")   # no path: the kind's own weights
        run.backbones.append(Backbone(f"{getattr(net, 'name', kind)}" + (f"@{Path(path).name}" if path else ""),
                                      net, measure.reid_source(kind, path)))
    t = time.perf_counter()
    for bb in run.backbones:
        bb.original = measure.embed_published(bb.net, data.query, progress=run.plan.progress,
                                              desc=f"queries {bb.name}")
        if data.labelled:
            bb.gallery = measure.embed_published(bb.net, data.gallery, progress=run.plan.progress,
                                                 desc=f"gallery {bb.name}")
    run.wall["embed_raw"] = time.perf_counter() - t


def _build_store(run: _Run) -> None:
    """Build the trusted store from the gallery split into ``OUT/store`` (replacing an old one)."""
    import shutil

    from latent_rag_ros.models.factory import model_fingerprint
    from latent_rag_ros.store.build import BuildPlan, build_store

    data = run.data
    run.store_path = run.out / "store"
    if Path(run.store_path).exists():
        shutil.rmtree(run.store_path)
    if not data.g_samples:
        raise ValueError(f"{run.plan.source}: no gallery to build the trusted store from; pass store_path")
    run.say(f"building the trusted store from {len(data.g_samples)} gallery crops -> {run.store_path}")
    t = time.perf_counter()
    with torch.no_grad():
        build_store(BuildPlan(data.g_samples, run.store_path, run.models.reid, run.models.latent_encoder,
                              batch_size=16, built_with=model_fingerprint(run.models), progress=run.plan.progress))
    run.wall["store_build"] = time.perf_counter() - t


def protect_stage(run: _Run) -> None:
    """Latent-RAG (the graph's bag, or the offline Protector), the baselines and the comparison methods."""
    from latent_rag_ros.core.protector import Protector

    plan, cfg, data, rcfg = run.plan, run.cfg, run.data, run.rcfg
    if data.protected is not None:
        lr_protected = data.protected
        attack_protected = data.attack_protected or []
        if data.protected_embeddings is not None and data.protected_model == run.primary_name:
            run.lr_embeddings = data.protected_embeddings
    else:
        from latent_rag_ros.store import open_store

        if run.store_path is None:
            _build_store(run)
        run.store = open_store(str(run.store_path))
        run.protector = Protector(run.models.generator, run.models.reid, cfg.protector, run.device)
        t = time.perf_counter()
        run.say(f"protecting {len(data.query)} queries (m={cfg.protector.m}, T={cfg.protector.steps})")
        lr_protected, run.lr_embeddings, run.timings = _protect_all(run.protector, data.query, run.store,
                                                                    plan.progress, labels=data.q_pids)
        run.wall["protect_queries"] = time.perf_counter() - t
        attack_protected = []
        if rcfg.steps > 0 and data.attack:
            per_crop = run.wall["protect_queries"] / max(1, len(data.query))
            run.say(f"plan: protect {len(data.attack)} attacker crops (about {per_crop * len(data.attack):.0f} s at "
                    f"the {per_crop:.2f} s/crop just measured), then train {len(plan.baselines)} recovery attackers "
                    f"({rcfg.model}, {rcfg.steps} steps, batch {rcfg.batch_size}, {rcfg.height}x{rcfg.width})")
            t = time.perf_counter()
            run.say(f"protecting {len(data.attack)} attacker crops (black-box queries of the protection)")
            attack_protected, _, _ = _protect_all(run.protector, data.attack, run.store, plan.progress,
                                                  desc="attacker pairs")
            run.wall["protect_attacker"] = time.perf_counter() - t
    run.protected_sets = {"latent_rag": lr_protected}
    run.attack_sets = {"latent_rag": attack_protected}
    bparams = plan.baseline_params or {}
    for name in plan.baselines:
        run.protected_sets[name] = apply_baseline(name, data.query, **bparams.get(name, {}))
        run.attack_sets[name] = (apply_baseline(name, data.attack, **bparams.get(name, {})) if name != "none"
                                 else list(data.attack))
    cparams = plan.comparison_params or {}
    for name in plan.comparisons:
        from latent_rag_ros.eval.comparisons import apply_comparison

        t = time.perf_counter()
        n_att = len(data.attack) if rcfg.steps > 0 else 0
        run.say(f"{name}: protecting {len(data.query)} queries and {n_att} attacker crops under {run.primary_name} "
                f"({cparams.get(name, {}) or 'paper settings'})")
        run.protected_sets[name] = apply_comparison(name, run.models.reid, data.query, cparams.get(name),
                                                    plan.progress)
        run.attack_sets[name] = apply_comparison(name, run.models.reid, data.attack, cparams.get(name),
                                                 plan.progress) if n_att else []
        run.wall[f"protect_{name}"] = time.perf_counter() - t


def measure_stage(run: _Run) -> None:
    """Privacy, utility (every backbone) and recovery attack of every method, all on the published images."""
    data, rcfg, backbones, progress = run.data, run.rcfg, run.backbones, run.plan.progress
    for name, prot in run.protected_sets.items():
        run.say(f"metrics: {name}")
        res: dict[str, Any] = {"privacy": measure.privacy(prot, data.query)}
        per_bb = {bb.name: measure.utility(bb, data, prot, progress) for bb in backbones}
        res["utility"] = {**per_bb[backbones[0].name], "backbone": backbones[0].name, "backbones": per_bb}
        if name == "latent_rag" and run.lr_embeddings is not None:
            # beside, labelled: the protector's own embedding of its float output (what L_id optimised)
            res["utility_float_path"] = {**measure.utility(backbones[0], data, None, progress, run.lr_embeddings),
                                         "backbone": backbones[0].name,
                                         "note": "protector's float-path embedding, not the published image"}
        t = time.perf_counter()
        if name == "none":
            rec = identity_result(data.query, rcfg)
        elif rcfg.steps > 0 and run.attack_sets[name]:
            run.say(f"recovery attack on {name}: {rcfg.model}, {rcfg.steps} steps, {len(run.attack_sets[name])} pairs")
            rec = recovery_attack(published(run.attack_sets[name]), data.attack, published(prot), data.query, rcfg,
                                  progress)
        else:
            rec = None
        run.wall[f"recovery_{name}"] = time.perf_counter() - t
        res["recovery"] = rec.summary() if rec is not None else {"ssim_mean": None, "psnr_mean": None,
                                                                 "skipped": "no attacker data or 0 steps"}
        if rec is not None:
            run.recovered[name] = rec.recovered
        run.methods[name] = res


def sweep_stage(run: _Run) -> None:
    """Fig. 7: privacy and utility of Latent-RAG over swept protector settings (offline Protector only)."""
    from latent_rag_ros.core.protector import Protector

    plan, data = run.plan, run.data
    sweep_specs = parse_sweeps(plan.sweeps)
    if sweep_specs and run.protector is None:
        raise ValueError("sweeps need the offline Protector (not available with a protected bag)")
    for key, values in sweep_specs.items():
        dotted = SWEEP_KEYS.get(key, key if "." in key else f"protector.{key}")
        rows = []
        for v in values:
            run.say(f"sweep {key}={v}")
            cfg_v = _sweep_cfg(run.cfg, run.cfg_path, plan.overrides, dotted, v)
            prot_v = Protector(run.models.generator, run.models.reid, cfg_v.protector, run.device)
            try:
                imgs, _, _ = _protect_all(prot_v, data.query, run.store, plan.progress, desc=f"sweep {key}={v}",
                                          labels=data.q_pids)
            finally:
                prot_v.close()
            priv = measure.privacy(imgs, data.query)
            util = measure.utility(run.backbones[0], data, imgs, plan.progress)
            rows.append({"value": v, "key": dotted, "ssim_mean": priv["ssim_mean"], "psnr_mean": priv["psnr_mean"],
                         "rank1": util["rank1"], "mAP": util["mAP"],
                         "embedding_cosine_mean": util["embedding_cosine_mean"]})
        run.sweep_rows[key] = rows


def extras_stage(run: _Run) -> None:
    """Table IV (ablations on the first queries) and Table V (parameters, FLOPs, time per stage)."""
    plan, cfg, data = run.plan, run.cfg, run.data
    extra_store = None
    if (plan.ablation or plan.table_v) and run.store is None:
        from latent_rag_ros.store import open_store

        spath = Path(run.store_path or cfg.resolve_path(cfg.store.path))
        if spath.exists():
            extra_store = open_store(str(spath))
    t_store = run.store if run.store is not None else extra_store
    try:
        if plan.ablation:
            if t_store is None:
                raise ValueError("--ablation needs the trusted store: pass --store (or set store.path)")
            from latent_rag_ros.eval.ablation import run_ablations

            n_ab = len(data.query) if plan.ablation_queries is None else min(plan.ablation_queries, len(data.query))
            sub = dataclasses.replace(data, query=data.query[:n_ab], q_pids=data.q_pids[:n_ab],
                                      q_camids=data.q_camids[:n_ab], q_groups=data.q_groups[:n_ab])
            first = run.backbones[0]
            bb0 = Backbone(first.name, first.net, first.source)
            bb0.gallery = first.gallery
            bb0.original = None if first.original is None else first.original[:n_ab]

            def scores(imgs: list[np.ndarray]) -> dict[str, Any]:
                u = measure.utility(bb0, sub, imgs, False)
                return {**measure.privacy(imgs, sub.query), **{k: u.get(k) for k in (
                    "embedding_cosine_mean", "own_match_rate", "own_match_chance", "rank1", "mAP")}}

            t = time.perf_counter()
            run.ablation_rows = run_ablations(run.models, cfg.protector, sub.query, t_store, run.device, scores,
                                              log=run.say)
            run.wall["ablation"] = time.perf_counter() - t
        if plan.table_v and data.query:
            from latent_rag_ros.eval.ablation import stage_costs

            try:
                run.cost_rows = stage_costs(run.models, cfg.protector, data.query[0], t_store, run.device)
            except Exception as exc:  # noqa: BLE001 - Table V is informative; the report still gets written
                run.say(f"Table V skipped: {exc}")
    finally:
        if extra_store is not None:
            extra_store.close()


def report_stage(run: _Run) -> dict[str, Any]:
    """``report.json``, ``report.md``, ``grid.png`` and the sweep plots; returns the report dict."""
    plan, cfg, data = run.plan, run.cfg, run.data
    n_q = len(data.query)
    methods = dict(run.methods)
    lr = methods.pop("latent_rag")
    bparams, cparams = plan.baseline_params or {}, plan.comparison_params or {}
    report: dict[str, Any] = {
        "source": {"path": str(plan.source), "kind": data.kind,
                   "protected_bag": str(plan.protected_bag) if plan.protected_bag else None,
                   "n_query": n_q, "n_gallery": len(data.gallery), "n_attack_train": len(data.attack),
                   "labelled": data.labelled, "notes": data.notes, "query_keys": data.query_keys},
        "privacy": lr["privacy"],
        "utility": lr["utility"],
        "recovery": lr["recovery"],
        "utility_float_path": lr.get("utility_float_path"),
        "measurement": "every method and backbone: embed_published (uint8 crop-size image, PNG round trip)",
        "baselines": methods,
        "timings_ms": {"total": run.timings,
                       "per_crop": {k: v / n_q for k, v in run.timings.items()} if run.timings else {},
                       "eval_wall_s": run.wall},
        "protector": {"m": cfg.protector.m, "T": cfg.protector.steps, "device": str(run.device),
                      "store": str(run.store_path) if run.store_path else None,
                      "store_version": getattr(run.store, "version", None) if run.store is not None else None},
        "config": cfg.to_dict(),
        "config_file": file_record(run.cfg_path),
        "overrides": plan.overrides or {},
        "models": _model_records(cfg, run.models, run.backbones),
        "random_weights": list(getattr(run.models, "random_weights", []) or []),
        "sweeps": run.sweep_rows,
        "ablation": run.ablation_rows,
        "stage_costs": run.cost_rows,
        "baseline_params": {n: bparams.get(n, {}) for n in plan.baselines},
        "comparison_params": {n: _comparison_settings(n, cparams.get(n)) for n in plan.comparisons},
        "json_conventions": "non-finite floats are strings 'inf'/'-inf'; NaN and unavailable values are null",
    }
    figs: dict[str, str] = {}
    try:
        from latent_rag_ros.eval.figures import comparison_grid, sweep_plot

        sets = run.protected_sets
        order = [n for n in ("blur", "mosaic") if n in sets] + [
            n for n in sets if n not in ("none", "blur", "mosaic", "latent_rag")] + ["latent_rag"]
        rows = [("original", data.query)]
        rows += [(f"{n} protected", sets[n]) for n in order]
        rows += [(f"{n} recovered", run.recovered[n]) for n in order if n in run.recovered]
        figs["grid"] = str(comparison_grid(rows, run.out / "grid.png", max_columns=plan.grid_columns))
        for key, rows_s in run.sweep_rows.items():
            safe = "".join(ch if ch.isalnum() else "_" for ch in key)
            figs[f"sweep_{key}"] = str(sweep_plot(key, rows_s, run.out / f"sweep_{safe}.png"))
    except ValueError as exc:
        report["figure_error"] = str(exc)
    report["figures"] = figs
    run.wall["total"] = time.perf_counter() - run.t_all
    write_json(report, run.out / "report.json")
    write_markdown(report, run.out / "report.md")
    run.say(f"report: {run.out / 'report.md'}")
    return report


STAGES: tuple[Callable[[_Run], Any], ...] = (load_stage, embed_stage, protect_stage, measure_stage, sweep_stage,
                                             extras_stage)


def run_plan(plan: EvalPlan) -> dict[str, Any]:
    """Run the stages of ``plan`` in order and write the report; returns the report dict (inf where infinite)."""
    run = _start(plan)
    try:
        for stage in STAGES:
            stage(run)
        return report_stage(run)
    finally:
        if run.store is not None:
            run.store.close()


def run_eval(cfg: Any, source: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """``run_plan(EvalPlan(source, out_dir, cfg, **options))``: the options are :class:`EvalPlan`'s fields."""
    try:
        plan = EvalPlan(source=source, out_dir=out_dir, cfg=cfg, **options)
    except TypeError as exc:
        names = ", ".join(f.name for f in dataclasses.fields(EvalPlan))
        raise TypeError(f"run_eval: {exc}; EvalPlan fields: {names}") from None
    return run_plan(plan)


def _comparison_settings(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The full solver settings a comparison method ran with (its config defaults plus ``params``)."""
    import dataclasses as dc

    from latent_rag_ros.eval.comparisons import ITERATIVE, AVIHConfig, PixelFadeConfig

    if name not in ITERATIVE:
        from latent_rag_ros.eval.anonymisers import anonymiser_settings

        return anonymiser_settings(name, params)
    cls = PixelFadeConfig if name == "pixelfade" else AVIHConfig
    return dc.asdict(cls(**(params or {})))
