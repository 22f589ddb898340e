"""Evaluation reports: ``report.json`` (machine-readable) and ``report.md`` (the paper's tables).

JSON has no infinity, and PSNR of identical images is infinite, so non-finite floats are written
as strings: ``"inf"`` / ``"-inf"``; NaN is written as ``null``. :func:`load_report` turns the
strings back into floats. Everything else is plain JSON (``allow_nan=False`` guarantees it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.fileio import sha256_file

ABLATION_TITLES = {"full": "Latent-RAG (full)", "no_retrieval": "w/o retrieval (start from E(I))",
                   "no_inverse_attention": "w/o inverse attention (plain mean)", "no_id_loss": "w/o L_id",
                   "no_div_loss": "w/o L_div"}
METHOD_TITLES = {"none": "–", "blur": "Gaussian Blur", "mosaic": "Mosaic", "pixelfade": "PixelFade",
                 "avih": "AVIH (no key model)", "privacyreid": "PrivacyReID (CPU-trained)",
                 "securereid": "SecureReID (CPU-trained, no ISED)", "latent_rag": "Latent-RAG (ours)"}


def file_record(path: str | Path | None) -> dict[str, Any]:
    """``{"path", "sha256"}`` of a file, or ``{"path", "sha256": None}`` for a non-file spec (random, demo...)."""
    if not path:
        return {"path": None, "sha256": None}
    p = Path(path)
    if p.is_file():
        return {"path": str(p.resolve()), "sha256": sha256_file(p)}
    return {"path": str(path), "sha256": None}


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, Paths and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())
    return obj


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable` for floats: ``"inf"``/``"-inf"`` strings become floats."""
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    return obj


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as strict JSON (non-finite floats encoded, see module doc)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return p


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a ``report.json`` back, with ``"inf"`` strings turned into float infinities."""
    return from_jsonable(json.loads(Path(path).read_text(encoding="utf-8")))


def _num(v: Any, digits: int = 2, scale: float = 1.0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        v = from_jsonable(v)
    if isinstance(v, (int, float)) and math.isinf(v):
        return "∞"
    return f"{float(v) * scale:.{digits}f}"


def _methods(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(name, report["baselines"][name]) for name in ("none", "blur", "mosaic") if name in report["baselines"]]
    rows += [(n, b) for n, b in report["baselines"].items() if n not in ("none", "blur", "mosaic")]
    rows.append(("latent_rag", {k: report.get(k) for k in ("privacy", "utility", "recovery")}))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """The paper's Tables I-III for this run, plus timings and sweeps, as Markdown."""
    src = report.get("source", {})
    lines = [
        "# Latent-RAG evaluation",
        "",
        f"Source: `{src.get('path')}` ({src.get('kind')}); queries: {src.get('n_query')}, "
        f"gallery: {src.get('n_gallery')}, attacker training pairs: {src.get('n_attack_train')}.",
    ]
    if report.get("random_weights"):
        lines += ["", f"**Warning:** random-weight models in this run: {', '.join(report['random_weights'])}. "
                  "The numbers measure the pipeline, not the paper's models."]
    lines += ["", "## Table I: privacy (protected vs original; lower is stronger)", "",
              "| Protection | PSNR ↓ | SSIM ↓ |", "|---|---|---|"]
    for name, m in _methods(report):
        p = m.get("privacy") or {}
        lines.append(f"| {METHOD_TITLES.get(name, name)} | {_num(p.get('psnr_mean'))} | {_num(p.get('ssim_mean'))} |")
    lines += ["", "## Table II: re-ID on protected queries (raw gallery; Rank-1 / mAP in %)", "",
              "Embedding cosine: protected vs its own original; vs different people: protected vs the originals of "
              "other people (other pids, or other people of the same frame). Own match: share of queries whose own "
              "original is closer than every other person's (chance level in brackets).", "",
              "| Re-ID backbone | Protection | Rank-1 ↑ | mAP ↑ | embedding cosine ↑ | vs different people | "
              "own match ↑ |", "|---|---|---|---|---|---|---|"]
    backbones = list(((report.get("utility") or {}).get("backbones") or {}).keys())
    for bb in backbones:
        rows = [(n, m) for n, m in _methods(report) if n != "none"] + [
            (n, m) for n, m in _methods(report) if n == "none"]
        for name, m in rows:
            u = ((m.get("utility") or {}).get("backbones") or {}).get(bb, {})
            title = "w/o protection" if name == "none" else METHOD_TITLES.get(name, name)
            chance = u.get("own_match_chance")
            own = _num(u.get("own_match_rate"), 1, 100) + (f" ({_num(chance, 1, 100)})" if chance is not None else "")
            lines.append(f"| {bb} | {title} | {_num(u.get('rank1'), 1, 100)} | {_num(u.get('mAP'), 1, 100)} | "
                         f"{_num(u.get('embedding_cosine_mean'), 3)} | "
                         f"{_num(u.get('different_people_cosine_mean'), 3)} | {own} |")
    if not backbones:
        lines.append("| (no labels: Rank-1/mAP not available) | | | | | | |")
    fp = report.get("utility_float_path")
    if fp:
        lines += ["", "All rows above embed the published image (uint8 at crop size, PNG round trip) "
                  "with one function. "
                  f"For reference only, Latent-RAG's float path (the protector's own {fp.get('backbone')} embedding "
                  "of its float output, what L_id optimised): embedding cosine "
                  f"{_num(fp.get('embedding_cosine_mean'), 3)}, "
                  f"Rank-1 {_num(fp.get('rank1'), 1, 100)}, mAP {_num(fp.get('mAP'), 1, 100)}, "
                  f"own match {_num(fp.get('own_match_rate'), 1, 100)}."]
    rec = report.get("recovery") or {}
    lines += ["", f"## Table III: recovery attack ({rec.get('model')}, {rec.get('steps')} steps; "
              "recovered vs original; lower is stronger)", "",
              "| Protection | PSNR ↓ | SSIM ↓ | PSNR before training | SSIM before training |", "|---|---|---|---|---|"]
    for name, m in _methods(report):
        r = m.get("recovery") or {}
        lines.append(f"| {METHOD_TITLES.get(name, name)} | {_num(r.get('psnr_mean'))} | {_num(r.get('ssim_mean'))} | "
                     f"{_num(r.get('before_psnr_mean'))} | {_num(r.get('before_ssim_mean'))} |")
    abl = report.get("ablation") or []
    if abl:
        lines += ["", f"## Table IV: ablations (offline Protector, {abl[0].get('count')} queries, published images)",
                  "", "| Variant | SSIM ↓ | PSNR ↓ | embedding cosine ↑ | own match ↑ | Rank-1 ↑ | mAP ↑ | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in abl:
            lines.append(f"| {ABLATION_TITLES.get(r['variant'], r['variant'])} | {_num(r.get('ssim_mean'))} | "
                         f"{_num(r.get('psnr_mean'))} | {_num(r.get('embedding_cosine_mean'), 3)} | "
                         f"{_num(r.get('own_match_rate'), 1, 100)} | {_num(r.get('rank1'), 1, 100)} | "
                         f"{_num(r.get('mAP'), 1, 100)} | {_num(r.get('seconds'), 1)} |")
    costs = report.get("stage_costs") or []
    if costs:
        lines += ["", "## Table V: parameters, FLOPs (torch.utils.flop_counter) and time per stage, one crop", "",
                  "| Stage | Network | Params (M) | GFLOPs | ms |", "|---|---|---|---|---|"]
        for r in costs:
            params = "-" if r.get("params") is None else _num(r["params"] / 1e6, 3)
            lines.append(f"| {r['stage']} | {r['network']} | {params} | {_num((r.get('flops') or 0) / 1e9, 4)} | "
                         f"{_num(r.get('seconds'), 1, 1000)} |")
    t = report.get("timings_ms") or {}
    if t.get("per_crop"):
        lines += ["", "## Protection time per crop (ms)", "", "| Stage | ms / crop |", "|---|---|"]
        lines += [f"| {k} | {_num(v, 1)} |" for k, v in t["per_crop"].items()]
    for key, rows in (report.get("sweeps") or {}).items():
        lines += ["", f"## Sweep of {key}", "", f"| {key} | SSIM ↓ | PSNR ↓ | Rank-1 ↑ | mAP ↑ |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['value']} | {_num(r.get('ssim_mean'))} | {_num(r.get('psnr_mean'))} | "
                         f"{_num(r.get('rank1'), 1, 100)} | {_num(r.get('mAP'), 1, 100)} |")
    figs = report.get("figures") or {}
    if figs:
        lines += ["", "## Figures", ""] + [f"- {k}: `{v}`" for k, v in figs.items()]
    models = report.get("models") or {}
    if models:
        lines += ["", "## Models and configuration", "", "| Model | Source | sha256 |", "|---|---|---|"]
        for k, v in models.items():
            lines.append(f"| {k} | `{v.get('path')}` | {v.get('sha256') or '-'} |")
        cf = report.get("config_file") or {}
        lines.append(f"| config | `{cf.get('path')}` | {cf.get('sha256') or '-'} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render_markdown` to ``path``."""
    p = Path(path)
    p.write_text(render_markdown(to_jsonable(report)), encoding="utf-8")
    return p
