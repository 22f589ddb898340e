"""``latent-rag bench e2e``: camera frame to ``/reid/protected`` through the real graph, at a fixed frame rate.

Per number of people per frame (``--people 1,8``) and protector path (``--paths eager,fast,folded``):
start store, detector, protector and egress as processes (``latent-rag run``'s Graph), publish real
vtest.avi frames in which the HOG detector finds at least that many people (``detector.max_crops`` is set
to it, so every frame yields exactly that many crops) at ``--rate`` Hz for ``--duration`` s, and match
each ProtectedCrop to its frame by the camera stamp. Prints p50/p99 latency (frame stamp to arrival),
crops protected per second, dropped frames and the load average, one JSON line per run and a table.

Defaults are the demo's settings (``cli.demo``: T=20, demo step sizes, the fine-tuned demo re-ID at
128x64); ``--set`` overrides them. Paths: ``eager`` (``protector.fast_path=false``), ``fast`` (the
default fast path, bit-identical to eager), ``folded`` / ``channels-last`` (``protector.fast_reid``),
``workers`` / ``workers-folded`` (the fast path with one 1-thread worker process per CPU core,
``protector.workers=0``; frames are protected side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

PATHS: dict[str, dict[str, Any]] = {
    "eager": {"protector.fast_path": False, "protector.fast_reid": "off", "protector.workers": 1},
    "fast": {"protector.fast_path": True, "protector.fast_reid": "off", "protector.workers": 1},
    "folded": {"protector.fast_path": True, "protector.fast_reid": "folded", "protector.workers": 1},
    "channels-last": {"protector.fast_path": True, "protector.fast_reid": "channels_last", "protector.workers": 1},
    # the fast path's loops in one 1-thread process per CPU core (core/parallel.py), E as is / folded
    "workers": {"protector.fast_path": True, "protector.fast_reid": "off", "protector.workers": 0},
    "workers-folded": {"protector.fast_path": True, "protector.fast_reid": "folded", "protector.workers": 0},
}
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
QUERY_START = 500          # frames from here on are replayed (the demo's query split) ...
GALLERY_FRAMES = (0, 480)  # ... and the store is built from people of these frames (the demo's gallery split)


def pick_frames(cfg: Any, people: int, count: int, first: int = QUERY_START,
                video: Path = VTEST) -> list[tuple[int, Any]]:
    """Up to ``count`` (index, frame) of ``video`` from ``first`` on in which the detector finds >= ``people``."""
    from latent_rag_ros.datasets import read_video_frames
    from latent_rag_ros.models.factory import build_detector
    from latent_rag_ros.people import crop_people

    det = build_detector(cfg)
    out = []
    for i, frame in read_video_frames(video):
        if i >= first and len(crop_people(det, frame, cfg.detector)) >= people:
            out.append((i, frame))
            if len(out) >= count:
                break
    if not out:
        raise SystemExit(f"latent-rag bench e2e: no frame of {video} from {first} on has {people} detections")
    return out


def build_gallery_store(cfg: Any, path: Path, step: int) -> dict[str, Any]:
    """The trusted store from the people of vtest.avi's gallery frames (every ``step``-th), with cfg's models."""
    import torch

    from latent_rag_ros.datasets import Sample, read_video_frames
    from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
    from latent_rag_ros.people import crop_people
    from latent_rag_ros.store.build import BuildPlan, build_store

    models = build_models(cfg, "cpu", with_encoder=True)
    det = build_detector(cfg)
    gallery = [Sample(image=p.crop, name=f"vtest#f{i:04d}_b{j}", frame=i)
               for i, fr in read_video_frames(VTEST, max_frames=GALLERY_FRAMES[1], frame_step=step)
               for j, p in enumerate(crop_people(det, fr, cfg.detector))]
    with torch.no_grad():
        stats = build_store(BuildPlan(gallery, path, models.reid, models.latent_encoder, batch_size=16,
                                      built_with=model_fingerprint(models), progress=False))
    return {"crops": len(gallery), "random_weights": models.random_weights, **stats}


def bench_e2e(args: argparse.Namespace) -> int:
    """Run every (people, path) combination in turn; JSON lines, then a markdown table; results in OUT/e2e.json."""
    from latent_rag_ros.cli.demo import DEMO_PROTECTOR, DEMO_REID
    from latent_rag_ros.config import absolute_paths, default_config_path, load_config, parse_overrides
    from latent_rag_ros.nodes.bench_e2e import run_fixed_rate, summarize  # lazy: ROS 2 (rclpy): optional
    from latent_rag_ros.nodes.graph import provision_local_keys

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(110, 200)))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    people = [int(p) for p in args.people.split(",") if p]
    paths = [p for p in args.paths.split(",") if p]
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths or not people or min(people) < 1:
        raise SystemExit(f"latent-rag bench e2e: --paths from {', '.join(PATHS)}; --people integers >= 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_file = str(args.config or default_config_path() or "") or None
    store = Path(args.store).resolve() if args.store else out / "store"
    settings = {} if args.no_demo_settings else {**DEMO_PROTECTOR, **DEMO_REID}
    base = {**settings, "store.path": str(store), "link.keys_dir": str(out / "keys"), "protector.device": "cpu",
            "ros.service_timeout_s": 30.0, "ros.evaluation_mode": True, "ros.status_period_s": 1.0,
            **absolute_paths(parse_overrides(args.set))}
    cfg = load_config(config_file, base)
    if not args.store:
        print(json.dumps({"store": str(store), **build_gallery_store(cfg, store, args.gallery_step)}), flush=True)
    provision_local_keys(config_file, base)
    rows = []
    for n in people:
        det_cfg = load_config(config_file, {**base, "detector.max_crops": n})
        pool = pick_frames(det_cfg, n, args.pool)
        print(json.dumps({"people": n, "frames": [i for i, _ in pool]}), flush=True)
        for path in paths:
            overrides = {**base, "detector.max_crops": n, **PATHS[path]}
            load_before = os.getloadavg()
            rec = run_fixed_rate([f for _, f in pool], config_file, overrides, args.rate, args.duration,
                                 log_dir=str(out / "logs" / f"p{n}_{path}"), drain_s=args.drain)
            row = {"people": n, "path": path, "rate_hz": args.rate, "duration_s": args.duration,
                   "T": det_cfg.protector.steps, "load_avg_before": [round(x, 2) for x in load_before],
                   "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                   "omp_threads": os.environ["OMP_NUM_THREADS"], **summarize(rec)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "e2e.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return 0 if all(r["crops_received"] > 0 for r in rows) else 1


def print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown summary of the runs."""
    print("\n| people | path | rate Hz | frames sent / protected / dropped | crops detected / received "
          "| crops/s | latency p50 / p99 ms | load avg 1-min before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['people']} | {r['path']} | {r['rate_hz']} | {r['frames_sent']} / {r['frames_protected']} / "
              f"{r['frames_dropped']} | {r['crops_detected']} / {r['crops_received']} | {r['crops_per_s']} "
              f"| {r['latency_ms_p50']} / {r['latency_ms_p99']} "
              f"| {r['load_avg_before'][0]} / {r['load_avg_after'][0]} |")


def register(bench_subparsers: Any) -> None:
    """Add ``bench e2e`` to the ``latent-rag bench`` subcommands."""
    from latent_rag_ros.cli.args import add_config_args

    p = bench_subparsers.add_parser("e2e", help="camera frame to /reid/protected through the graph at a fixed rate")
    add_config_args(p)
    p.add_argument("--people", default="1,8", help="comma list: people per frame (frames with that many detections)")
    p.add_argument("--paths", default="fast", help=f"comma list of protector paths: {', '.join(PATHS)}")
    p.add_argument("--rate", type=float, default=1.0, help="camera frames per second (fixed)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing per run")
    p.add_argument("--pool", type=int, default=12, help="distinct vtest frames, published in a loop")
    p.add_argument("--drain", type=float, default=15.0,
                   help="stop after this long without output (or 1.5x the worst latency)")
    p.add_argument("--store", default="", help="an existing store built with these models (default: build one in OUT)")
    p.add_argument("--gallery-step", type=int, default=8, help="store from every N-th of vtest frames 0-479")
    p.add_argument("--no-demo-settings", action="store_true",
                   help="config defaults instead of the demo's T/steps/re-ID")
    p.add_argument("--out", default="bench_e2e_out", help="folder for e2e.json, the store, keys and node logs")
    p.set_defaults(func=bench_e2e)
