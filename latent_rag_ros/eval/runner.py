"""``run_eval``: the paper's evaluation (Tables I-III, Fig. 6-7) on a dataset, a video or a bag.

Protocol (paper IV-A): protection applies to QUERIES only; gallery features come from the RAW
gallery images; the trusted store is built from the gallery split. Privacy = SSIM/PSNR of the
protected queries against their originals; utility = Rank-1/mAP of protected queries against the
raw gallery (standard Market-1501 protocol) for one or more re-ID backbones, plus the cosine of
each protected image's embedding with its original's; recovery = a restoration network trained on
(protected, original) pairs of a split disjoint from the queries, judged on the queries.
The same is measured for the baselines (none, Gaussian blur, mosaic). How each kind of source is
split into queries, gallery and attacker data: :mod:`latent_rag_ros.eval.sources`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_rag_ros.eval.baselines import BASELINES, apply_baseline
from latent_rag_ros.eval.metrics import (
    cosine_distmat,
    different_people,
    embedding_cosine,
    evaluate_rank,
    image_similarity,
)
from latent_rag_ros.eval.recovery import RecoveryConfig, identity_result, recovery_attack
from latent_rag_ros.eval.report import file_record, write_json, write_markdown
from latent_rag_ros.eval.sources import EvalData, load_eval_data

__all__ = ["EvalData", "embed_crops", "embed_published", "load_eval_data", "parse_reid_list", "parse_sweeps",
           "published", "run_eval"]

SWEEP_KEYS = {"m": "protector.m", "T": "protector.steps"}


# ------------------------------------------------------------------------------------- features


@torch.no_grad()
def embed_crops(reid: torch.nn.Module, crops: Sequence[np.ndarray], batch_size: int = 32,
                progress: bool = False, desc: str = "embed") -> np.ndarray:
    """L2-normalised re-ID features [N, D] of BGR crops (each resized to the encoder's input size)."""
    from latent_rag_ros.core.imaging import bgr_to_tensor

    size = tuple(getattr(reid, "input_size", (256, 128)))
    device = next(reid.parameters()).device
    feats = []
    starts: Sequence[int] = range(0, len(crops), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, disable=None)
    for s in starts:
        x = bgr_to_tensor(crops[s:s + batch_size], size, device)  # type: ignore[arg-type]
        feats.append(reid(x).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, int(getattr(reid, "dim", 0))), np.float32)


def published(crops: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images as the remote server decodes them: uint8 at crop size, through a lossless PNG round trip.

    Every method (Latent-RAG from the graph's ``rgb8`` ProtectedCrop or the offline Protector, and
    the baselines) is measured on this, so no method is judged on a private float path.
    """
    import cv2

    out = []
    for i, img in enumerate(crops):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise ValueError(f"published image {i}: expected uint8 HxWx3, got {getattr(img, 'shape', type(img))}")
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise ValueError(f"published image {i}: PNG encoding failed")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return out


def embed_published(reid: torch.nn.Module, images: Sequence[np.ndarray], progress: bool = False,
                    desc: str = "embed") -> np.ndarray:
    """The one embedding function of the evaluation: :func:`embed_crops` of the :func:`published` images."""
    return embed_crops(reid, published(images), progress=progress, desc=desc)


def parse_reid_list(text: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``"deepsort_mobilenetv2,bagtricks:PATH"`` -> ``[("deepsort_mobilenetv2", None), ("bagtricks", "PATH")]``."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        kind, _, path = item.partition(":")
        out.append((kind.strip(), path.strip() or None))
    return out


class _Backbone:
    """One re-ID backbone with cached raw-gallery and raw-query features."""

    def __init__(self, name: str, net: torch.nn.Module, source: dict[str, Any]) -> None:
        self.name, self.net, self.source = name, net, source
        self.gallery: np.ndarray | None = None
        self.original: np.ndarray | None = None


def _utility(bb: _Backbone, data: EvalData, protected: Sequence[np.ndarray] | None, progress: bool,
             embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """Re-ID utility of protected queries; ``embeddings`` only for the labelled float-path figures."""
    feats = embeddings if embeddings is not None else embed_published(bb.net, protected or [], progress=progress,
                                                                      desc=f"embed {bb.name}")
    assert bb.original is not None
    cos = embedding_cosine(feats, bb.original)
    out: dict[str, Any] = {"embedding_cosine_mean": float(cos.mean()), "rank1": None, "rank5": None,
                           "rank10": None, "mAP": None}
    labelled = all(p is not None for p in data.q_pids)
    out.update(different_people(feats, bb.original, data.q_pids if labelled else data.q_groups, labelled))
    if data.labelled and bb.gallery is not None and len(bb.gallery):
        try:
            cmc, m_ap = evaluate_rank(cosine_distmat(feats, bb.gallery), data.q_pids, data.g_pids,
                                      data.q_camids, data.g_camids, max_rank=50)
            out.update(rank1=float(cmc[0]), rank5=float(cmc[4]), rank10=float(cmc[9]), mAP=float(m_ap))
        except ValueError as exc:
            out["rank_error"] = str(exc)
    return out


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


def _privacy(protected: Sequence[np.ndarray], original: Sequence[np.ndarray]) -> dict[str, Any]:
    sim = image_similarity(published(protected), original)
    return {k: sim[k] for k in ("ssim_mean", "psnr_mean", "psnr_mean_finite", "count")}


# ------------------------------------------------------------------------------------------- main


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


def _model_records(cfg: Any, models: Any, backbones: list[_Backbone]) -> dict[str, Any]:
    recs: dict[str, Any] = {}
    for key in ("generator", "latent_encoder"):
        spec = getattr(cfg.models, key)
        rec = file_record(cfg.resolve_path(spec))
        rec["source"] = (getattr(models, "sources", {}) or {}).get(key, spec)
        recs[key] = rec
    for bb in backbones:
        recs[f"reid:{bb.name}"] = bb.source
    return recs


def _reid_source(kind: str, path: str | None) -> dict[str, Any]:
    if path:
        rec = file_record(path)
    elif kind == "deepsort_mobilenetv2":
        try:
            from latent_rag_ros.models.reid import deepsort_weights_path

            rec = file_record(deepsort_weights_path())
        except Exception:  # noqa: BLE001 - the record is informative only
            rec = {"path": None, "sha256": None}
    else:
        rec = {"path": None, "sha256": None}
    rec["kind"] = kind
    return rec


def run_eval(cfg: Any, source: str | Path, out_dir: str | Path, models: Any = None,
             reid_names: str | Sequence[str] | None = None, sweeps: Any = None, recovery_steps: int = 500,
             max_queries: int | None = None, protected_bag: str | Path | None = None, progress: bool = True,
             *, overrides: dict[str, Any] | None = None, recovery_model: str = "unet",
             recovery: RecoveryConfig | None = None, max_gallery: int | None = None, max_attack: int | None = 256,
             store_path: str | Path | None = None, baselines: Sequence[str] = BASELINES,
             baseline_params: dict[str, dict[str, Any]] | None = None,
             grid_columns: int = 6, log: Callable[[str], None] | None = None,
             ablation: bool = False, ablation_queries: int | None = None, table_v: bool = True) -> dict[str, Any]:
    """Run the whole evaluation and write ``report.json``, ``report.md``, ``grid.png`` and sweep plots.

    ``cfg``: a Config, or a config file path / None (then ``overrides`` apply). ``reid_names``: extra
    backbones ``kind[:path]`` judged on the same protected queries (Table II). ``sweeps``: e.g.
    ``["m=1,5,10,20", "T=0,5,10,20"]``. ``ablation``: Table IV on the first ``ablation_queries``
    queries (all when None); ``table_v``: parameters, FLOPs and time per stage on one crop.
    Returns the report dict (floats, inf where infinite).
    """
    from latent_rag_ros.core.protector import Protector, resolve_device
    from latent_rag_ros.models.factory import build_detector, build_models, build_reid, model_fingerprint

    say = log or (lambda msg: print(f"[eval] {msg}", flush=True) if progress else None)
    t_all = time.perf_counter()
    cfg, cfg_path = _resolve_cfg(cfg, overrides)
    device = resolve_device(cfg.protector.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}

    t = time.perf_counter()
    if models is None:
        models = build_models(cfg, device, with_encoder=protected_bag is None or ablation)
    detector = getattr(models, "detector", None)
    from latent_rag_ros.datasets import needs_detector

    if detector is None and needs_detector(source):
        detector = build_detector(cfg)   # unlabelled videos and bags get identities from tracks
    data = load_eval_data(source, max_queries, max_gallery, max_attack, protected_bag, detector, cfg.protector.seed,
                          det_cfg=cfg.detector, sheet=out / "tracks.png",
                          store_fraction=0.0 if store_path is not None else 0.5)
    wall["load"] = time.perf_counter() - t
    say(f"{data.kind}: {len(data.query)} queries, {len(data.gallery)} gallery, {len(data.attack)} attacker crops"
        + (f" ({'; '.join(data.notes)})" if data.notes else ""))

    primary_name = getattr(models.reid, "name", cfg.models.reid)
    backbones = [_Backbone(primary_name, models.reid, _reid_source(cfg.models.reid, cfg.models.reid_path or None))]
    for kind, path in parse_reid_list(reid_names):
        if kind == cfg.models.reid and path in (None, cfg.models.reid_path or None):
            continue
        net = build_reid(cfg, device, kind=kind, path=path)
        backbones.append(_Backbone(f"{getattr(net, 'name', kind)}" + (f"@{Path(path).name}" if path else ""),
                                   net, _reid_source(kind, path)))
    t = time.perf_counter()
    for bb in backbones:
        bb.original = embed_published(bb.net, data.query, progress=progress, desc=f"queries {bb.name}")
        if data.labelled:
            bb.gallery = embed_published(bb.net, data.gallery, progress=progress, desc=f"gallery {bb.name}")
    wall["embed_raw"] = time.perf_counter() - t

    # --- Latent-RAG protection of the queries (offline Protector, or the graph's bag) -------------
    store = None
    timings: dict[str, float] = {}
    rcfg = dataclasses.replace(recovery or RecoveryConfig(), model=recovery_model, steps=recovery_steps,
                               seed=cfg.protector.seed)
    if recovery is None or recovery.device == "cpu":
        rcfg.device = str(device)  # train the attacker where the protector runs
    t = time.perf_counter()
    if data.protected is not None:
        lr_protected = data.protected
        lr_embeddings = None
        attack_protected = data.attack_protected or []
        if data.protected_embeddings is not None and data.protected_model == primary_name:
            lr_embeddings = data.protected_embeddings
        protector = None
    else:
        from latent_rag_ros.store import open_store

        if store_path is None:
            from latent_rag_ros.store.build import build_store

            store_path = out / "store"
            if Path(store_path).exists():
                import shutil

                shutil.rmtree(store_path)
            if not data.g_samples:
                raise ValueError(f"{source}: no gallery to build the trusted store from; pass store_path")
            say(f"building the trusted store from {len(data.g_samples)} gallery crops -> {store_path}")
            with torch.no_grad():
                build_store(data.g_samples, store_path, models.reid, models.latent_encoder,
                            batch_size=16, built_with=model_fingerprint(models), progress=progress)
            wall["store_build"] = time.perf_counter() - t
        store = open_store(str(store_path))
        protector = Protector(models.generator, models.reid, cfg.protector, device)
        t = time.perf_counter()
        say(f"protecting {len(data.query)} queries (m={cfg.protector.m}, T={cfg.protector.steps})")
        lr_protected, lr_embeddings, timings = _protect_all(protector, data.query, store, progress,
                                                            labels=data.q_pids)
        wall["protect_queries"] = time.perf_counter() - t
        attack_protected = []
        if rcfg.steps > 0 and data.attack:
            per_crop = wall["protect_queries"] / max(1, len(data.query))
            say(f"plan: protect {len(data.attack)} attacker crops (about {per_crop * len(data.attack):.0f} s at the "
                f"{per_crop:.2f} s/crop just measured), then train {len(baselines)} recovery attackers "
                f"({rcfg.model}, {rcfg.steps} steps, batch {rcfg.batch_size}, {rcfg.height}x{rcfg.width})")
            t = time.perf_counter()
            say(f"protecting {len(data.attack)} attacker crops (black-box queries of the protection)")
            attack_protected, _, _ = _protect_all(protector, data.attack, store, progress, desc="attacker pairs")
            wall["protect_attacker"] = time.perf_counter() - t

    # --- metrics per method ------------------------------------------------------------------------
    methods: dict[str, dict[str, Any]] = {}
    protected_sets: dict[str, list[np.ndarray]] = {"latent_rag": lr_protected}
    attack_sets: dict[str, list[np.ndarray]] = {"latent_rag": attack_protected}
    bparams = baseline_params or {}
    for name in baselines:
        protected_sets[name] = apply_baseline(name, data.query, **bparams.get(name, {}))
        attack_sets[name] = (apply_baseline(name, data.attack, **bparams.get(name, {})) if name != "none"
                             else list(data.attack))
    recovered: dict[str, list[np.ndarray]] = {}
    for name, prot in protected_sets.items():
        say(f"metrics: {name}")
        res: dict[str, Any] = {"privacy": _privacy(prot, data.query)}
        per_bb = {bb.name: _utility(bb, data, prot, progress) for bb in backbones}
        res["utility"] = {**per_bb[backbones[0].name], "backbone": backbones[0].name, "backbones": per_bb}
        if name == "latent_rag" and lr_embeddings is not None:
            # beside, labelled: the protector's own embedding of its float output (what L_id optimised)
            res["utility_float_path"] = {**_utility(backbones[0], data, None, progress, lr_embeddings),
                                         "backbone": backbones[0].name,
                                         "note": "protector's float-path embedding, not the published image"}
        t = time.perf_counter()
        if name == "none":
            rec = identity_result(data.query, rcfg)
        elif rcfg.steps > 0 and attack_sets[name]:
            say(f"recovery attack on {name}: {rcfg.model}, {rcfg.steps} steps, {len(attack_sets[name])} pairs")
            rec = recovery_attack(published(attack_sets[name]), data.attack, published(prot), data.query, rcfg,
                                  progress)
        else:
            rec = None
        wall[f"recovery_{name}"] = time.perf_counter() - t
        res["recovery"] = rec.summary() if rec is not None else {"ssim_mean": None, "psnr_mean": None,
                                                                 "skipped": "no attacker data or 0 steps"}
        if rec is not None:
            recovered[name] = rec.recovered
        methods[name] = res

    # --- sweeps (Fig. 7) --------------------------------------------------------------------------
    sweep_rows: dict[str, list[dict[str, Any]]] = {}
    sweep_specs = parse_sweeps(sweeps)
    if sweep_specs and protector is None:
        raise ValueError("sweeps need the offline Protector (not available with a protected bag)")
    for key, values in sweep_specs.items():
        dotted = SWEEP_KEYS.get(key, key if "." in key else f"protector.{key}")
        rows = []
        for v in values:
            say(f"sweep {key}={v}")
            cfg_v = _sweep_cfg(cfg, cfg_path, overrides, dotted, v)
            prot_v = Protector(models.generator, models.reid, cfg_v.protector, device)
            imgs, _, _ = _protect_all(prot_v, data.query, store, progress, desc=f"sweep {key}={v}",
                                         labels=data.q_pids)
            priv = _privacy(imgs, data.query)
            util = _utility(backbones[0], data, imgs, progress)
            rows.append({"value": v, "key": dotted, "ssim_mean": priv["ssim_mean"], "psnr_mean": priv["psnr_mean"],
                         "rank1": util["rank1"], "mAP": util["mAP"],
                         "embedding_cosine_mean": util["embedding_cosine_mean"]})
        sweep_rows[key] = rows

    # --- Table IV (ablations) and Table V (costs per stage) ------------------------------------
    extra_store = None
    if (ablation or table_v) and store is None:
        from latent_rag_ros.store import open_store

        spath = Path(store_path or cfg.resolve_path(cfg.store.path))
        if spath.exists():
            extra_store = open_store(str(spath))
    t_store = store if store is not None else extra_store
    ablation_rows: list[dict[str, Any]] = []
    if ablation:
        if t_store is None:
            raise ValueError("--ablation needs the trusted store: pass --store (or set store.path)")
        from latent_rag_ros.eval.ablation import run_ablations

        n_ab = len(data.query) if ablation_queries is None else min(ablation_queries, len(data.query))
        sub = dataclasses.replace(data, query=data.query[:n_ab], q_pids=data.q_pids[:n_ab],
                                  q_camids=data.q_camids[:n_ab], q_groups=data.q_groups[:n_ab])
        bb0 = _Backbone(backbones[0].name, backbones[0].net, backbones[0].source)
        bb0.gallery = backbones[0].gallery
        bb0.original = None if backbones[0].original is None else backbones[0].original[:n_ab]

        def measure(imgs: list[np.ndarray]) -> dict[str, Any]:
            u = _utility(bb0, sub, imgs, False)
            return {**_privacy(imgs, sub.query), **{k: u.get(k) for k in (
                "embedding_cosine_mean", "own_match_rate", "own_match_chance", "rank1", "mAP")}}

        t = time.perf_counter()
        ablation_rows = run_ablations(models, cfg.protector, sub.query, t_store, device, measure, log=say)
        wall["ablation"] = time.perf_counter() - t
    cost_rows: list[dict[str, Any]] = []
    if table_v and data.query:
        from latent_rag_ros.eval.ablation import stage_costs

        try:
            cost_rows = stage_costs(models, cfg.protector, data.query[0], t_store, device)
        except Exception as exc:  # noqa: BLE001 - Table V is informative; the report still gets written
            say(f"Table V skipped: {exc}")
    if extra_store is not None:
        extra_store.close()

    # --- report -----------------------------------------------------------------------------------
    n_q = len(data.query)
    lr = methods.pop("latent_rag")
    report: dict[str, Any] = {
        "source": {"path": str(source), "kind": data.kind,
                   "protected_bag": str(protected_bag) if protected_bag else None,
                   "n_query": n_q, "n_gallery": len(data.gallery), "n_attack_train": len(data.attack),
                   "labelled": data.labelled, "notes": data.notes, "query_keys": data.query_keys},
        "privacy": lr["privacy"],
        "utility": lr["utility"],
        "recovery": lr["recovery"],
        "utility_float_path": lr.get("utility_float_path"),
        "measurement": "every method and backbone: embed_published (uint8 crop-size image, PNG round trip)",
        "baselines": methods,
        "timings_ms": {"total": timings, "per_crop": {k: v / n_q for k, v in timings.items()} if timings else {},
                       "eval_wall_s": wall},
        "protector": {"m": cfg.protector.m, "T": cfg.protector.steps, "device": str(device),
                      "store": str(store_path) if store_path else None,
                      "store_version": getattr(store, "version", None) if store is not None else None},
        "config": cfg.to_dict(),
        "config_file": file_record(cfg_path),
        "overrides": overrides or {},
        "models": _model_records(cfg, models, backbones),
        "random_weights": list(getattr(models, "random_weights", []) or []),
        "sweeps": sweep_rows,
        "ablation": ablation_rows,
        "stage_costs": cost_rows,
        "baseline_params": {n: bparams.get(n, {}) for n in baselines},
        "json_conventions": "non-finite floats are strings 'inf'/'-inf'; NaN and unavailable values are null",
    }
    figs: dict[str, str] = {}
    try:
        from latent_rag_ros.eval.figures import comparison_grid, sweep_plot

        order = [n for n in ("blur", "mosaic") if n in protected_sets] + [
            n for n in protected_sets if n not in ("none", "blur", "mosaic", "latent_rag")] + ["latent_rag"]
        rows = [("original", data.query)]
        rows += [(f"{n} protected", protected_sets[n]) for n in order]
        rows += [(f"{n} recovered", recovered[n]) for n in order if n in recovered]
        figs["grid"] = str(comparison_grid(rows, out / "grid.png", max_columns=grid_columns))
        for key, rows_s in sweep_rows.items():
            safe = "".join(ch if ch.isalnum() else "_" for ch in key)
            figs[f"sweep_{key}"] = str(sweep_plot(key, rows_s, out / f"sweep_{safe}.png"))
    except ValueError as exc:
        report["figure_error"] = str(exc)
    report["figures"] = figs
    wall["total"] = time.perf_counter() - t_all
    if store is not None:
        store.close()
    write_json(report, out / "report.json")
    write_markdown(report, out / "report.md")
    say(f"report: {out / 'report.md'}")
    return report
