"""``latent-rag eval``, ``latent-rag make-bag`` and ``latent-rag bench rank`` (registered by ``latent_rag_ros.cli``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from latent_rag_ros.cli.args import add_config_args
from latent_rag_ros.config import BAG_CAMERA_TOPIC, default_config_path, load_config, parse_overrides

# the recovery attackers of eval.recovery.RECOVERY_MODELS, spelled here so the parser needs no torch
ATTACKERS = ("unet", "restormer", "restormer-cpu", "restormer-paper")
CPU_ATTACK = {"steps": 200, "batch_size": 8, "channels": 16}    # a 30-frame bag: a few minutes on 2 cores
CPU_COMPARISON_ITERS, GPU_COMPARISON_ITERS = 30, 100            # PixelFade / AVIH (papers: 100)
GPU_ATTACK = {"steps": 500, "batch_size": 16, "channels": 32}


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 128x64, got {text!r}") from None


def _baseline_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    if args.blur:
        k, _, sigma = args.blur.partition(",")
        params["blur"] = {"kernel": int(k), **({"sigma": float(sigma)} if sigma else {})}
    if args.mosaic_block:
        params["mosaic"] = {"block": args.mosaic_block}
    return params


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; a source it cannot evaluate gives one line on stderr and exit code 2."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.bagio import BagError
    from latent_rag_ros.models.safe_load import ModelFileError
    from latent_rag_ros.store.base import StoreError

    try:
        return _eval(args)
    except (ValueError, OSError, BagError, ModelFileError, StoreError) as exc:  # DatasetError is a ValueError
        print(f"latent-rag eval: {exc}", file=sys.stderr)
        return 2


def _eval(args: argparse.Namespace) -> int:
    """Run the evaluation and print where the report went plus its headline numbers."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.eval.recovery import RecoveryConfig
    from latent_rag_ros.eval.runner import run_eval

    source = args.data or args.bag
    if args.protected and not args.bag:
        print("--protected needs --bag (the camera bag the protected bag was recorded from)", file=sys.stderr)
        return 2
    path = args.config or default_config_path()
    overrides = parse_overrides(args.set)
    cfg = load_config(path, overrides)  # validate before any work
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.core.protector import resolve_device

    # CPU defaults sized so a short bag evaluates in minutes; GPU defaults are the larger attacker
    cpu = resolve_device(cfg.protector.device).type == "cpu"
    steps = args.recovery_steps if args.recovery_steps is not None else (CPU_ATTACK if cpu else GPU_ATTACK)["steps"]
    batch = args.recovery_batch or (CPU_ATTACK if cpu else GPU_ATTACK)["batch_size"]
    channels = args.recovery_channels or (CPU_ATTACK if cpu else GPU_ATTACK)["channels"]
    h, w = args.recovery_size
    rcfg = RecoveryConfig(height=h, width=w, batch_size=batch, channels=channels)
    iters = args.comparison_iters or (CPU_COMPARISON_ITERS if cpu else GPU_COMPARISON_ITERS)
    report = run_eval(str(path) if path else None, source, args.out, reid_names=args.reid, sweeps=args.sweep,
                      recovery_steps=steps, max_queries=args.max_queries,
                      protected_bag=args.protected, progress=not args.quiet, overrides=overrides,
                      recovery_model=args.recovery_model, recovery=rcfg, max_gallery=args.max_gallery,
                      max_attack=args.attack_max, store_path=args.store or None,
                      baseline_params=_baseline_params(args),
                      ablation=args.ablation, ablation_queries=args.ablation_queries,
                      comparisons=_comparisons(args.comparisons),
                      comparison_params={n: {"iters": iters} for n in _comparisons(args.comparisons)},
                      log=lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True))  # plan even if --quiet
    summary = {
        "report": f"{args.out}/report.md",
        "privacy.ssim_mean": report["privacy"]["ssim_mean"],
        "privacy.psnr_mean": report["privacy"]["psnr_mean"],
        "utility.rank1": report["utility"]["rank1"],
        "utility.mAP": report["utility"]["mAP"],
        "utility.embedding_cosine_mean": report["utility"]["embedding_cosine_mean"],
        "recovery.psnr_mean": report["recovery"].get("psnr_mean"),
        "recovery.ssim_mean": report["recovery"].get("ssim_mean"),
    }
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.eval.report import to_jsonable

    print(json.dumps(to_jsonable(summary)))
    if report.get("random_weights"):
        print(f"WARNING: random-weight models: {', '.join(report['random_weights'])}", file=sys.stderr)
    return 0


def _comparisons(text: str) -> list[str]:
    """``"pixelfade,avih"`` -> the listed comparison methods (``none``/empty: none), validated."""
    from latent_rag_ros.eval.comparisons import COMPARISONS

    names = [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none"]
    bad = [n for n in names if n not in COMPARISONS]
    if bad:
        raise ValueError(f"--comparisons: unknown {bad}; choose from {', '.join(COMPARISONS)} (or none)")
    return names


def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write a dataset, a folder of crops or a video as a rosbag2 camera stream (with labels when known)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.eval.bags import BagPlan, make_bag

    stats = make_bag(BagPlan(args.input, args.out, topic=args.topic, storage=args.storage, rate_hz=args.rate,
                             progress=not args.quiet, split=args.split))
    print(json.dumps(stats))
    return 0 if stats["frames"] else 1


def cmd_bench_rank(args: argparse.Namespace) -> int:
    """Time ``evaluate_rank`` on a random Market-1501-sized problem (3368 x 19732 by default)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    import numpy as np

    from latent_rag_ros.eval.metrics import evaluate_rank

    rng = np.random.default_rng(0)
    nq, ng = args.queries, args.gallery
    dist = rng.random((nq, ng), dtype=np.float32)
    q_pids, g_pids = rng.integers(0, 750, nq), rng.integers(0, 750, ng)
    q_cam, g_cam = rng.integers(1, 7, nq), rng.integers(1, 7, ng)
    t = time.perf_counter()
    cmc, m_ap = evaluate_rank(dist, q_pids, g_pids, q_cam, g_cam)
    print(json.dumps({"queries": nq, "gallery": ng, "seconds": round(time.perf_counter() - t, 3),
                      "rank1": float(cmc[0]), "mAP": m_ap}))
    return 0


def register(subparsers: Any, bench_subparsers: Any = None) -> None:
    """Add ``eval`` and ``make-bag`` (and ``bench rank``) to the ``latent-rag`` command."""
    p = subparsers.add_parser("eval", help="privacy / utility / recovery evaluation with baselines (paper tables)")
    add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="Market-1501 / MSMT17 / CUHK03 folder, folder of crops, or video")
    src.add_argument("--bag", help="camera rosbag2 (labels travel on /latent_rag/labels)")
    p.add_argument("--protected", default=None, metavar="OUT_BAG",
                   help="bag recorded from /reid/protected while --bag was replayed into the graph")
    p.add_argument("--out", required=True, help="report folder (report.json, report.md, grid.png, sweeps)")
    p.add_argument("--reid", default=None,
                   help="extra re-ID backbones for transferability: kind[:path],... e.g. bagtricks:/w/bt.pth")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a protector parameter: m=1,5,10,20 or T=0,5,10,20 (repeatable)")
    p.add_argument("--recovery-steps", type=int, default=None,
                   help="attacker training steps (0: no attack; default 200 on CPU, 500 on a GPU)")
    p.add_argument("--recovery-model", "--attacker", dest="recovery_model", choices=ATTACKERS, default="unet",
                   help="recovery attacker: unet, restormer (small, 2 scales), restormer-cpu (4 levels, dim 24, "
                        "~30 min on 2 cores), restormer-paper (published 26.1 M configuration; a GPU job)")
    p.add_argument("--recovery-size", type=_size, default=(128, 64), metavar="HxW", help="attack resolution")
    p.add_argument("--recovery-batch", type=int, default=0, help="default 8 on CPU, 16 on a GPU")
    p.add_argument("--recovery-channels", type=int, default=0, help="U-Net base channels (default 16 CPU, 32 GPU)")
    p.add_argument("--attack-max", type=int, default=256, help="at most this many attacker training pairs")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate at most this many queries")
    p.add_argument("--max-gallery", type=int, default=None,
                   help="cap the gallery (true matches of the queries are always kept)")
    p.add_argument("--store", default="", help="use this trusted store instead of building one from the gallery")
    p.add_argument("--blur", default="", metavar="KERNEL[,SIGMA]",
                   help="Gaussian blur baseline at height 256 (default 21,7; scaled with each crop's height)")
    p.add_argument("--mosaic-block", type=int, default=0, metavar="N",
                   help="mosaic block size at height 256 (default 8; scaled with each crop's height)")
    p.add_argument("--ablation", action="store_true",
                   help="Table IV: w/o retrieval, w/o inverse attention, w/o L_id, w/o L_div (offline, needs a store)")
    p.add_argument("--ablation-queries", type=int, default=None, metavar="N",
                   help="run the ablations on the first N queries only (default: all)")
    p.add_argument("--comparisons", default="pixelfade,avih", metavar="NAMES",
                   help="comparison methods: pixelfade, avih (under the primary re-ID model), privacyreid, securereid "
                        "(trained anonymisers, data/demo checkpoints; `latent-rag train anonymiser`) (none: skip)")
    p.add_argument("--comparison-iters", type=int, default=0, metavar="N",
                   help="iterations of each comparison method (default 30 on CPU, the papers' 100 on a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("make-bag", help="write a dataset, crops folder or video as a rosbag2 (no ROS)")
    p.add_argument("--input", required=True, help="dataset folder, folder of crops, or video file")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the bag (Hz)")
    p.add_argument("--topic", default=BAG_CAMERA_TOPIC, help=f"camera topic to write (default {BAG_CAMERA_TOPIC})")
    p.add_argument("--split", choices=["query", "gallery", "train"], default=None,
                   help="only this split of a benchmark folder (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_bag)

    if bench_subparsers is not None:
        p = bench_subparsers.add_parser("rank", help="evaluate_rank time on a Market-1501-sized problem")
        p.add_argument("--queries", type=int, default=3368)
        p.add_argument("--gallery", type=int, default=19732)
        p.set_defaults(func=cmd_bench_rank)
