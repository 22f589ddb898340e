"""Store subcommands of ``latent-rag``: build-store, store add/stats/verify/compact/remove/expire/rekey/keygen/audit,
bench store.

Model and config modules are imported inside the command functions, so this module imports
without them (``latent_rag_ros.cli`` calls :func:`register`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

from latent_rag_ros.cli.args import add_config_args, config_from_args
from latent_rag_ros.store.base import StoreError


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(config, models, device) from ``--config``/``--set``."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.core.protector import resolve_device
    from latent_rag_ros.models.factory import build_models

    cfg = config_from_args(args)
    device = resolve_device(cfg.protector.device)
    models = build_models(cfg, device, with_encoder=True)
    if models.random_weights:
        print(f"WARNING: random-weight models in use: {', '.join(models.random_weights)}", file=sys.stderr)
    return cfg, models, device


def _samples(cfg: Any, source: str, split: str | None, limit: int) -> Any:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.datasets import needs_detector, open_source
    from latent_rag_ros.models.factory import build_detector

    detector = build_detector(cfg) if needs_detector(source) else None
    samples = open_source(source, detector=detector, split=split)
    return list(islice(samples, limit)) if limit else samples


def _build(args: argparse.Namespace, out: str, resume: bool, must_exist: bool) -> int:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.models.factory import model_fingerprint
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.build import BuildPlan, build_store

    key = args.key_file or config_from_args(args).store.key_file or None
    if must_exist:
        open_store(out, read_only=True, verify="size", key_file=key).close()  # clear errors before models load
    cfg, models, _ = _models(args)
    opts: dict[str, Any] = {"key_file": key} if key else {}
    if getattr(args, "latent_dtype", None):
        opts["latent_dtype"] = args.latent_dtype
    plan = BuildPlan(_samples(cfg, args.images, args.split, args.limit), out, models.reid, models.latent_encoder,
                     batch_size=args.batch_size or cfg.protector.batch_size, resume=resume,
                     built_with=model_fingerprint(models), progress=not args.quiet, store_opts=opts or None)
    stats = build_store(plan)
    _print(stats)
    return 0


def cmd_build_store(args: argparse.Namespace) -> int:
    """Build (or resume building) a store from crops, a dataset folder, a video or a bag."""
    return _build(args, args.out, resume=not args.no_resume, must_exist=False)


def cmd_store_add(args: argparse.Namespace) -> int:
    """Add the crops of a source to an existing store (names already there are skipped)."""
    return _build(args, args.store, resume=True, must_exist=True)


def cmd_store_stats(args: argparse.Namespace) -> int:
    """Print a store's size, shapes, index, version and model fingerprint (built_with) as JSON."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store

    with open_store(args.store, read_only=True, verify="size", **_key(args)) as store:
        _print(store.stats())
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    """Re-check every checksum of a store; exit status 1 when anything is wrong."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store

    with open_store(args.store, read_only=True, verify="full", **_key(args)) as store:
        report = store.verify()
    _print(report)
    return 0 if report["ok"] else 1


def cmd_store_compact(args: argparse.Namespace) -> int:
    """Fold a FAISS store's log into its snapshot (``--purge`` also drops removed entries)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store

    with open_store(args.store, **_key(args)) as store:
        if not hasattr(store, "compact"):
            print("this backend has no compaction (Milvus compacts itself)", file=sys.stderr)
            return 1
        _print(store.compact(purge=True if args.purge else None))
    return 0


def _key(args: argparse.Namespace) -> dict[str, Any]:
    return {"key_file": args.key_file} if getattr(args, "key_file", None) else {}


def _audit_file(args: argparse.Namespace) -> str:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store.audit import audit_path_for

    return str(audit_path_for(args.store, getattr(args, "audit", "") or ""))


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def cmd_store_remove(args: argparse.Namespace) -> int:
    """Erase entries by label (a person) or id: removed from the index, the database and every store file."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.audit import AuditTrail

    trail = AuditTrail(_audit_file(args))
    try:
        with open_store(args.store, **_key(args)) as store:
            if args.label is not None:
                if not hasattr(store, "ids_with_label"):
                    raise StoreError(f"{args.store}: this backend cannot select by label; remove by --id")
                ids = [int(i) for i in store.ids_with_label(args.label)]
                if not ids:
                    raise ValueError(f"{args.store}: no entries with label {args.label!r}")
            else:
                ids = [int(i) for i in args.id]
            try:
                store.remove(ids)
            except (StoreError, ValueError) as exc:
                trail.record("remove", _actor(), ids, False, str(exc))
                raise
            trail.record("remove", _actor(), ids, True, f"label {args.label!r}" if args.label is not None else "")
            _print({"removed": ids, "size": len(store), "version": store.version})
    finally:
        trail.close()
    return 0


def cmd_store_expire(args: argparse.Namespace) -> int:
    """Retention: erase every entry older than ``--max-age`` (same path as remove)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.audit import AuditTrail, parse_since

    max_age = time.time() - parse_since(args.max_age)
    trail = AuditTrail(_audit_file(args))
    try:
        with open_store(args.store, **_key(args)) as store:
            gone = [int(i) for i in store.expire(max_age)]
            trail.record("expire", _actor(), gone, True, f"max age {max_age:.0f} s")
            _print({"expired": gone, "size": len(store)})
    finally:
        trail.close()
    return 0


def cmd_store_rekey(args: argparse.Namespace) -> int:
    """Re-encrypt a store under a new key (``--decrypt``: store it unencrypted) in one transaction."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.audit import AuditTrail

    if not args.new_key_file and not args.decrypt:
        raise ValueError("give --new-key-file (create one with `latent-rag store keygen FILE`) or --decrypt")
    trail = AuditTrail(_audit_file(args))
    try:
        with open_store(args.store, **_key(args)) as store:
            if not hasattr(store, "rekey"):
                raise StoreError(f"{args.store}: this backend has no encryption at rest")
            out = store.rekey(None if args.decrypt else args.new_key_file)
            trail.record("rekey", _actor(), [], True, f"{out['old_key_id'] or 'none'} -> {out['new_key_id'] or 'none'}")
            _print(out)
    finally:
        trail.close()
    return 0


def cmd_store_keygen(args: argparse.Namespace) -> int:
    """Create a new store key file (mode 0600; never overwrites)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store.crypto import generate_key_file

    try:
        _print({"key_file": args.path, "key_id": generate_key_file(args.path)})
    except FileExistsError:
        raise StoreError(f"{args.path}: already exists; a key file is never overwritten") from None
    return 0


def cmd_store_audit(args: argparse.Namespace) -> int:
    """``audit verify``: recompute the hash chain (exit 1 when broken); ``audit show``: list records."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store.audit import parse_since, show_audit, verify_audit

    path = _audit_file(args)
    if args.audit_command == "verify":
        report = verify_audit(path, args.expect_head)
        _print(report)
        return 0 if report["ok"] else 1
    since = parse_since(args.since) if args.since else None
    for rec in show_audit(path, since, args.action, args.id):
        print(json.dumps(rec))
    return 0


def dds_round_trip(store_path: str | None, n: int = 100) -> dict[str, Any] | str:
    """Service round trip over DDS (m=10 codes of 16x512) through a real store_node process.

    The store benchmark's only use of the ROS layer, so it lives here, in the cli layer. Reported as
    not measured where rclpy or the built interfaces are missing.
    """
    try:
        # lazy: ROS 2 (rclpy): optional, absent from a pip install
        from latent_rag_ros.nodes.bench_service import service_round_trip  # rclpy: optional (pip install)
    except ImportError as exc:
        return f"not measured: ROS 2 (rclpy and this package's interfaces) not available: {exc}"
    return service_round_trip(store_path, n=n)


def cmd_bench_store(args: argparse.Namespace) -> int:
    """Build/search/recall benchmark of the embedded store (and optionally the fp16 W+ cost)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.store.bench import bench_store, fp16_identity_cost
    from latent_rag_ros.store.crypto import generate_key_file

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    shape = tuple(int(x) for x in args.latent_shape.lower().split("x"))
    if args.compare_encryption:
        # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
        from latent_rag_ros.store.bench import bench_encryption

        pair = [bench_encryption(n, args.dim, args.queries, shape if n < 1_000_000 else (1, 8),  # type: ignore[arg-type]
                                 args.latent_dtype, args.workdir, data_model=args.data) for n in sizes]
        if args.out:
            Path(args.out).write_text(json.dumps({"compare_encryption": pair}, indent=1))
        return 0
    with tempfile.TemporaryDirectory(prefix="latent_rag_key_") as keydir:  # a key apart from the stores
        key = None
        if args.encrypt:
            key = str(Path(keydir) / "bench.key")
            generate_key_file(key)
        report = bench_store(sizes, dim=args.dim, queries=args.queries, out=None, latent_shape=shape,  # type: ignore[arg-type]
                             latent_dtype=args.latent_dtype, workdir=args.workdir, data_model=args.data, key_file=key)
    report["dds_round_trip"] = dds_round_trip(None)
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
        except (StoreError, ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    run.__doc__ = fn.__doc__
    return run


def register(subparsers: Any, bench_subparsers: Any) -> None:
    """Add build-store, store {add,stats,verify,compact} and bench store to the ``latent-rag`` parser."""
    p = subparsers.add_parser("build-store", help="build a trusted store from crops/dataset/video/bag (resumable)")
    add_config_args(p)
    p.add_argument("--images", required=True, help="crops folder, Market-1501/MSMT17/CUHK03 root, video or bag")
    p.add_argument("--out", required=True, help="store directory, Milvus Lite *.db file or Milvus URI")
    p.add_argument("--batch-size", type=int, default=0, help="crops per model call (default protector.batch_size)")
    p.add_argument("--no-resume", action="store_true", help="fail if a store already exists at --out")
    p.add_argument("--split", default=None, help="dataset split (query/gallery/train) for benchmark layouts")
    p.add_argument("--limit", type=int, default=0, help="use at most this many crops")
    p.add_argument("--latent-dtype", choices=["float32", "float16"], default=None,
                   help="how a new store keeps W+ codes (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--key-file", default=None, help="encrypt a new store with this key (default store.key_file)")
    p.set_defaults(func=_guard(cmd_build_store))

    store = subparsers.add_parser("store", help="inspect and maintain a trusted store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    p = ssub.add_parser("add", help="add the crops of a source to an existing store")
    add_config_args(p)
    p.add_argument("--store", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--key-file", default=None, help="the store's key file (default store.key_file)")
    p.set_defaults(func=_guard(cmd_store_add))
    key_help = "the store's key file when it is encrypted"
    audit_help = "audit file (default: audit.log in the store directory)"
    p = ssub.add_parser("stats", help="print size, shapes, index, version, built_with")
    p.add_argument("store")
    p.add_argument("--key-file", default=None, help=key_help)
    p.set_defaults(func=_guard(cmd_store_stats))
    p = ssub.add_parser("verify", help="re-check every row and file (exit 1 when anything is wrong)")
    p.add_argument("store")
    p.add_argument("--key-file", default=None, help=key_help)
    p.set_defaults(func=_guard(cmd_store_verify))
    p = ssub.add_parser("compact", help="snapshot the index and truncate the SQLite WAL")
    p.add_argument("store")
    p.add_argument("--purge", action="store_true", help="also drop removed slots, rebuild the index and VACUUM")
    p.add_argument("--key-file", default=None, help=key_help)
    p.set_defaults(func=_guard(cmd_store_compact))
    p = ssub.add_parser("remove", help="erase a person (--label) or entries (--id) from the store and its files")
    p.add_argument("store")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--label", default=None, help="every entry with this identity label")
    who.add_argument("--id", type=int, action="append", help="an entry id (repeatable)")
    p.add_argument("--key-file", default=None, help=key_help)
    p.add_argument("--audit", default="", help=audit_help)
    p.set_defaults(func=_guard(cmd_store_remove))
    p = ssub.add_parser("expire", help="retention: erase entries older than --max-age")
    p.add_argument("store")
    p.add_argument("--max-age", required=True, help="e.g. 30d, 12h, 90m")
    p.add_argument("--key-file", default=None, help=key_help)
    p.add_argument("--audit", default="", help=audit_help)
    p.set_defaults(func=_guard(cmd_store_expire))
    p = ssub.add_parser("rekey", help="re-encrypt the store under a new key (crash-safe)")
    p.add_argument("store")
    p.add_argument("--key-file", default=None, help="the current key (omit for an unencrypted store)")
    new = p.add_mutually_exclusive_group()
    new.add_argument("--new-key-file", default=None, help="the new key (from `latent-rag store keygen`)")
    new.add_argument("--decrypt", action="store_true", help="store the rows unencrypted")
    p.add_argument("--audit", default="", help=audit_help)
    p.set_defaults(func=_guard(cmd_store_rekey))
    p = ssub.add_parser("keygen", help="create a store key file (0600), kept apart from the store")
    p.add_argument("path")
    p.set_defaults(func=_guard(cmd_store_keygen))
    audit = ssub.add_parser("audit", help="verify or list the store's hash-chained audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = asub.add_parser("verify", help="recompute the hash chain (exit 1 when a record was edited or deleted)")
    p.add_argument("store", help="store directory or audit file")
    p.add_argument("--audit", default="", help=audit_help)
    p.add_argument("--expect-head", default=None, help="head hash kept elsewhere (detects deleted last records)")
    p.set_defaults(func=_guard(cmd_store_audit))
    p = asub.add_parser("show", help="print records as JSON lines")
    p.add_argument("store", help="store directory or audit file")
    p.add_argument("--audit", default="", help=audit_help)
    p.add_argument("--since", default=None, help="ISO time (UTC) or a duration back from now: 15m, 2h, 7d")
    p.add_argument("--action", default=None, choices=["retrieve", "add", "remove", "expire", "rekey"])
    p.add_argument("--id", type=int, default=None, help="only records touching this entry id")
    p.set_defaults(func=_guard(cmd_store_audit))

    p = bench_subparsers.add_parser("store", help="store build time, search latency and recall by size")
    add_config_args(p)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latent-shape", default="14x512", help="W+ shape below 1M entries (1M+: 1x8)")
    p.add_argument("--latent-dtype", choices=["float32", "float16"], default="float16")
    p.add_argument("--workdir", default=None, help="where the stores are built (default: a temp dir)")
    p.add_argument("--data", choices=["structured", "isotropic"], default="structured",
                   help="synthetic data model (see latent_rag_ros/store/bench.py)")
    p.add_argument("--encrypt", action="store_true", help="encrypt the stores at rest (a temporary key)")
    p.add_argument("--compare-encryption", action="store_true",
                   help="encrypted vs unencrypted copies of one store, measured interleaved")
    p.add_argument("--fp16-cost", action="store_true", help="also measure the fp16 W+ identity cost (config models)")
    p.add_argument("--out", default=None, help="write the report as JSON")
    p.set_defaults(func=_guard(cmd_bench_store))
