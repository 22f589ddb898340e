"""Store subcommands of ``latent-rag``: build-store, store add/stats/verify/compact, bench store.

Model and config modules are imported inside the command functions, so this module imports
without them (``latent_rag_ros.cli`` calls :func:`register`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from latent_rag_ros.store.base import StoreError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="parameter file (default: the package's config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set models.reid=bagtricks (repeatable)")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(config, models, device) from ``--config``/``--set``."""
    from latent_rag_ros.cli import config_from_args
    from latent_rag_ros.core.protector import resolve_device
    from latent_rag_ros.models.factory import build_models

    cfg = config_from_args(args)
    device = resolve_device(cfg.protector.device)
    models = build_models(cfg, device, with_encoder=True)
    if models.random_weights:
        print(f"WARNING: random-weight models in use: {', '.join(models.random_weights)}", file=sys.stderr)
    return cfg, models, device


def _samples(cfg: Any, source: str, split: str | None, limit: int) -> Any:
    from itertools import islice
    from pathlib import Path

    from latent_rag_ros.datasets import open_source, source_kind
    from latent_rag_ros.models.factory import build_detector

    detector = build_detector(cfg) if Path(source).is_file() or source_kind(source) in ("video", "bag") else None
    samples = open_source(source, detector=detector, split=split)
    return list(islice(samples, limit)) if limit else samples


def _build(args: argparse.Namespace, out: str, resume: bool, must_exist: bool) -> int:
    from latent_rag_ros.models.factory import store_identity
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.build import build_store

    if must_exist:
        open_store(out).close()  # a clear StoreNotFoundError before any model is loaded
    cfg, models, _ = _models(args)
    opts = {"latent_dtype": args.latent_dtype} if getattr(args, "latent_dtype", None) else None
    stats = build_store(_samples(cfg, args.images, args.split, args.limit), out, models.reid, models.latent_encoder,
                        batch_size=args.batch_size or cfg.protector.batch_size, resume=resume,
                        built_with=store_identity(models), progress=not args.quiet, store_opts=opts)
    _print(stats)
    return 0


def cmd_build_store(args: argparse.Namespace) -> int:
    """Build (or resume building) a store from crops, a dataset folder, a video or a bag."""
    return _build(args, args.out, resume=not args.no_resume, must_exist=False)


def cmd_store_add(args: argparse.Namespace) -> int:
    """Add the crops of a source to an existing store (names already there are skipped)."""
    return _build(args, args.store, resume=True, must_exist=True)


def cmd_store_stats(args: argparse.Namespace) -> int:
    """Print a store's size, shapes, index, version and model identity as JSON."""
    from latent_rag_ros.store import open_store

    with open_store(args.store, read_only=True, verify="size") as store:
        _print(store.stats())
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    """Re-check every checksum of a store; exit status 1 when anything is wrong."""
    from latent_rag_ros.store import open_store

    with open_store(args.store, read_only=True, verify="full") as store:
        report = store.verify()
    _print(report)
    return 0 if report["ok"] else 1


def cmd_store_compact(args: argparse.Namespace) -> int:
    """Fold a FAISS store's log into its snapshot (``--purge`` also drops removed entries)."""
    from latent_rag_ros.store import open_store

    with open_store(args.store) as store:
        if not hasattr(store, "compact"):
            print("this backend has no compaction (Milvus compacts itself)", file=sys.stderr)
            return 1
        _print(store.compact(purge=True if args.purge else None))
    return 0


def cmd_bench_store(args: argparse.Namespace) -> int:
    """Build/search/recall benchmark of the embedded store (and optionally the fp16 W+ cost)."""
    import tempfile
    from pathlib import Path

    from latent_rag_ros.store.bench import bench_store, fp16_identity_cost
    from latent_rag_ros.store.crypto import generate_key_file

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    shape = tuple(int(x) for x in args.latent_shape.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="latent_rag_key_") as keydir:  # a key apart from the stores
        key = None
        if args.encrypt:
            key = str(Path(keydir) / "bench.key")
            generate_key_file(key)
        report = bench_store(sizes, dim=args.dim, queries=args.queries, out=None, latent_shape=shape,  # type: ignore[arg-type]
                             latent_dtype=args.latent_dtype, workdir=args.workdir, data_model=args.data, key_file=key)
    print(json.dumps({"dds_round_trip": report.get("dds_round_trip")}, default=str))
    if args.fp16_cost:
        _, models, _ = _models(args)
        report["fp16_cost"] = {"models": models.sources, **fp16_identity_cost(models.generator, models.reid)}
        print(json.dumps(report["fp16_cost"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


def _guard(fn: Any) -> Any:
    """Turn store errors into one clear line and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except (StoreError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    run.__doc__ = fn.__doc__
    return run


def register(subparsers: Any, bench_subparsers: Any) -> None:
    """Add build-store, store {add,stats,verify,compact} and bench store to the ``latent-rag`` parser."""
    p = subparsers.add_parser("build-store", help="build a trusted store from crops/dataset/video/bag (resumable)")
    _config_args(p)
    p.add_argument("--images", required=True, help="crops folder, Market-1501/MSMT17/CUHK03 root, video or bag")
    p.add_argument("--out", required=True, help="store directory, Milvus Lite *.db file or Milvus URI")
    p.add_argument("--batch-size", type=int, default=0, help="crops per model call (default protector.batch_size)")
    p.add_argument("--no-resume", action="store_true", help="fail if a store already exists at --out")
    p.add_argument("--split", default=None, help="dataset split (query/gallery/train) for benchmark layouts")
    p.add_argument("--limit", type=int, default=0, help="use at most this many crops")
    p.add_argument("--latent-dtype", choices=["float32", "float16"], default=None,
                   help="how a new store keeps W+ codes (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_guard(cmd_build_store))

    store = subparsers.add_parser("store", help="inspect and maintain a trusted store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    p = ssub.add_parser("add", help="add the crops of a source to an existing store")
    _config_args(p)
    p.add_argument("--store", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_guard(cmd_store_add))
    p = ssub.add_parser("stats", help="print size, shapes, index, version, built_with")
    p.add_argument("store")
    p.set_defaults(func=_guard(cmd_store_stats))
    p = ssub.add_parser("verify", help="re-check every checksum (exit 1 when anything is wrong)")
    p.add_argument("store")
    p.set_defaults(func=_guard(cmd_store_verify))
    p = ssub.add_parser("compact", help="fold the log into a new snapshot")
    p.add_argument("store")
    p.add_argument("--purge", action="store_true", help="also drop removed entries and rebuild the index")
    p.set_defaults(func=_guard(cmd_store_compact))

    p = bench_subparsers.add_parser("store", help="store build time, search latency and recall by size")
    _config_args(p)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latent-shape", default="14x512", help="W+ shape below 1M entries (1M+: 1x8)")
    p.add_argument("--latent-dtype", choices=["float32", "float16"], default="float16")
    p.add_argument("--workdir", default=None, help="where the stores are built (default: a temp dir)")
    p.add_argument("--data", choices=["structured", "isotropic"], default="structured",
                   help="synthetic data model (see latent_rag_ros/store/bench.py)")
    p.add_argument("--encrypt", action="store_true", help="encrypt the stores at rest (a temporary key)")
    p.add_argument("--fp16-cost", action="store_true", help="also measure the fp16 W+ identity cost (config models)")
    p.add_argument("--out", default=None, help="write the report as JSON")
    p.set_defaults(func=_guard(cmd_bench_store))
