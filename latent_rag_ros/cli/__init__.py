"""The ``latent-rag`` command: run the graph, protect offline, build stores, evaluate, replay, demo.

Every subcommand reads the same configuration (``--config`` file + ``--set key=value`` overrides,
:mod:`latent_rag_ros.cli.args`) as the nodes. The cli layer is the top of the import layers
(docs/design.md): the store, eval, training and keys subcommands live beside this module
(``cli/store.py`` ...) and register themselves (``register``). A subcommand whose Python package is
missing fails with one line naming it; nothing disappears from ``--help``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from latent_rag_ros.cli import eval as eval_cli
from latent_rag_ros.cli import security as security_cli
from latent_rag_ros.cli import store as store_cli
from latent_rag_ros.cli import training as training_cli
from latent_rag_ros.cli.args import add_config_args, config_from_args
from latent_rag_ros.cli.demo import run_demo
from latent_rag_ros.cli.eval import ATTACKERS
from latent_rag_ros.config import ConfigError, absolute_paths, default_config_path, parse_overrides, ros_name

__all__ = ["build_parser", "config_from_args", "main", "user_error"]


def cmd_run(args: argparse.Namespace) -> int:
    """Start detector, protector, egress (and store) as processes until SIGINT/SIGTERM."""
    # lazy: ROS 2 (rclpy): optional, absent from a pip install
    from latent_rag_ros.nodes.graph import Respawn, run_graph

    if importlib.util.find_spec("rclpy") is None:   # else every node process would die on it, respawn by respawn
        raise ModuleNotFoundError("No module named 'rclpy'", name="rclpy")

    cfg = config_from_args(args)  # validate before starting anything
    overrides = absolute_paths(parse_overrides(args.set))
    if args.camera_topic:
        overrides["ros.camera_topic"] = args.camera_topic
    del cfg
    return run_graph(args.config or str(default_config_path() or ""), args.with_store, overrides,
                     Respawn(max_retries=max(0, args.respawn_max_retries), delay=max(0.0, args.respawn_delay)),
                     autostart=args.autostart)


def cmd_protect(args: argparse.Namespace) -> int:
    """Protect a folder of crops or the people in a video, without ROS."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    import numpy as np
    from tqdm import tqdm

    from latent_rag_ros.core.protector import Protector, resolve_device
    from latent_rag_ros.datasets import needs_detector, open_source
    from latent_rag_ros.models.factory import build_detector, build_models
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.base import model_mismatch

    cfg = config_from_args(args)
    store = open_store(args.store or cfg.store.path, read_only=True)  # a running store_node holds the writer lock
    device = resolve_device(cfg.protector.device)
    models = build_models(cfg, device, with_encoder=False)
    if models.random_weights:
        print(f"WARNING: random-weight models in use: {', '.join(models.random_weights)}", file=sys.stderr)
    mismatch = model_mismatch(store.built_with, {k: models.sources[k] for k in ("generator", "reid")},
                              f"store {args.store or cfg.store.path!r}")
    if mismatch:
        store.close()
        raise SystemExit(f"latent-rag protect: {mismatch}")
    detector = build_detector(cfg) if needs_detector(args.input) else None
    protector = Protector(models.generator, models.reid, cfg.protector, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = list(open_source(args.input, detector=detector))
    if args.limit:
        samples = samples[: args.limit]
    if not samples:
        print(f"no images or people found in {args.input}", file=sys.stderr)
        return 1
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    import cv2

    index = []
    bs = cfg.protector.batch_size
    for s in tqdm(range(0, len(samples), bs), desc="protect", unit="batch", disable=None):
        batch = samples[s: s + bs]
        protected, result = protector.protect_crops([b.image for b in batch], store)
        for i, (smp, img) in enumerate(zip(batch, protected)):
            name = f"{s + i:06d}.png"
            cv2.imwrite(str(out / name), img)
            index.append({"file": name, "source": smp.name, "pid": smp.pid,
                          "embedding": np.round(result.embeddings[i].cpu().numpy(), 6).tolist()})
    (out / "index.json").write_text(json.dumps({"models": models.sources, "store_version": store.version,
                                                "items": index}, indent=1))
    print(f"protected {len(index)} crops -> {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an NVlabs snapshot to the project's safetensors + JSON format."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.models.generator_io import convert_snapshot

    st, js = convert_snapshot(args.snapshot, args.out)
    print(f"wrote {st} and {js}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Play a bag's camera topic into the running graph and record /reid/protected."""
    # lazy: ROS 2 (rclpy): optional, absent from a pip install
    from latent_rag_ros.nodes.replay import ReplayPlan, replay_bag

    cfg = config_from_args(args)
    stats = replay_bag(ReplayPlan(args.bag, args.out, ros_name(cfg.ros.camera_topic), ros_name(cfg.ros.egress_topic),
                                  args.topic, args.rate, args.storage, drain_s=args.drain,
                                  wait_subscribed=(ros_name(cfg.ros.crops_topic),)))
    print(json.dumps(stats))
    return 0 if stats["protected_received"] > 0 else 1


def _bench_protect(args: argparse.Namespace) -> int:
    """``latent-rag bench protect`` (the authors' loop vs the fast path)."""
    from latent_rag_ros.cli.bench import bench_protect  # lazy: heavy (torch at import), only for this benchmark

    return bench_protect(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole job on the embedded default: store, graph, replay, report."""
    return run_demo(args)


# Errors a user can fix (a missing or wrong file, store, bag, option): one line and exit code 2, no
# traceback (``--debug`` shows it). Matched by class name so this module imports no heavy layer.
USER_ERRORS = {"ConfigError", "PlanError", "DatasetError", "ModelFileError", "BagError", "StoreError", "RetrievalError",
               "FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "PermissionError", "ReaderError"}
ROS_MODULES = ("rclpy", "rcl_interfaces", "sensor_msgs", "diagnostic_msgs", "latent_rag_ros.msg",
               "latent_rag_ros.srv", "latent_rag_ros.nodes")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_error(exc: BaseException) -> str:
    """One line for an error the user can fix, or "" for a bug (which keeps its traceback)."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith(ROS_MODULES):
        return (f"this command needs ROS 2 ({exc.name} is missing): build the package with colcon and source "
                "install/setup.bash, or use the repository's venv (make setup)")
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("latent_rag_ros"):
        package = exc.name.split(".")[0]
        return (f"this command needs the Python package {package!r}, which is not installed: "
                "pip install -r requirements.txt (pinned versions)")
    if {c.__name__ for c in type(exc).__mro__} & USER_ERRORS:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="latent-rag", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start the protection graph (what protect.launch.py starts)")
    add_config_args(p)
    p.add_argument("--with-store", action="store_true", help="also start a local store_node")
    p.add_argument("--camera-topic", default="", help="camera topic (default from config)")
    p.add_argument("--respawn-max-retries", type=int, default=5,
                   help="restart a node that dies up to N times (backoff from --respawn-delay); 0: stop the graph")
    p.add_argument("--respawn-delay", type=float, default=1.0, help="seconds before the first restart (doubles)")
    p.add_argument("--no-autostart", dest="autostart", action="store_false",
                   help="leave the lifecycle nodes unconfigured for `ros2 lifecycle set` or a lifecycle manager")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("protect", help="protect a folder of crops or the people in a video (no ROS)")
    add_config_args(p)
    p.add_argument("--input", required=True, help="folder of crops, dataset folder, or video file")
    p.add_argument("--out", required=True, help="output folder (PNG files + index.json)")
    p.add_argument("--store", default="", help="store directory/URI (default: config store.path)")
    p.add_argument("--limit", type=int, default=0, help="protect at most this many crops")
    p.set_defaults(func=cmd_protect)

    p = sub.add_parser("convert", help="convert an NVlabs snapshot (.pkl) to safetensors + JSON")
    p.add_argument("snapshot")
    p.add_argument("out", help="output path without extension (OUT.safetensors, OUT.json)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("replay", help="play a bag into the running graph and record /reid/protected")
    add_config_args(p)
    p.add_argument("--bag", required=True)
    p.add_argument("--out", required=True, help="output bag")
    p.add_argument("--topic", default=None, help="camera topic in the input bag (default: the first Image topic)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--drain", type=float, default=10.0, help="seconds without output before stopping")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="run the whole job on the embedded default (vtest.avi)")
    add_config_args(p)
    p.add_argument("--out", default="demo_out", help="output folder (report, bags, logs)")
    p.add_argument("--query-frames", type=int, default=60, help="query frames replayed through the graph")
    p.add_argument("--recovery-steps", type=int, default=300, help="recovery attacker training steps")
    p.add_argument("--attacker", choices=ATTACKERS, default="unet",
                   help="recovery attacker (default: the demo's small 16-channel U-Net; restormer-paper is the "
                        "published 26.1 M Restormer, a GPU job)")
    p.add_argument("--ablation-queries", type=int, default=8, help="queries of the Table IV ablations (0: none)")
    p.add_argument("--comparison-iters", type=int, default=30,
                   help="PixelFade/AVIH iterations in the demo (papers: 100; 0: skip them)")
    p.add_argument("--anonymisers", action="store_true",
                   help="also evaluate PrivacyReID and SecureReID (trained anonymisers; two more recovery attackers)")
    p.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks (not tests)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("protect", help="authors' loop vs eager vs fast path, side by side, per batch size")
    add_config_args(p)
    p.add_argument("--generator", default="demo,sg3t-64,sg3r-human-64x32",
                   help="comma list: demo, sg3t-RES, sg3r-RES, sg3[t|r]-human-HxW (e.g. sg3t-256,sg3r-human-512x256)")
    p.add_argument("--batch-sizes", default="1,8", help="comma list (32 is optional on CPU: slow)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per path after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--variants", default="", help="extra measured paths: workers,workers-folded,folded,...")
    p.add_argument("--workers", type=int, default=0,
                   help="processes of the workers variants (0 = one per CPU core)")
    p.set_defaults(func=_bench_protect)
    from latent_rag_ros.cli.bench_e2e import register as register_bench_e2e  # light: argparse only

    register_bench_e2e(bench_sub)

    for register in (store_cli.register, eval_cli.register, training_cli.register, security_cli.register):
        register(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latent-rag`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        msg = "" if args.debug else user_error(exc)
        if not msg:
            raise
        what = "configuration error" if isinstance(exc, ConfigError) else "error"
        print(f"latent-rag {args.command}: {what}: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
