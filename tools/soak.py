"""Soak benchmark: the whole graph under a 10 Hz camera for a long time; RSS, threads, fds and latency.

    .venv/bin/python tools/soak.py --duration 1800 --rate 10 --out soak_out

Starts store, detector, protector and egress as processes (``latent-rag run``'s Graph) with the
demo models and a store built from vtest.avi frames 0-199, publishes frames 500+ of vtest.avi in a
loop, and every ``--sample-s`` seconds records each node's RSS, thread count and open file
descriptors (from /proc) and the end-to-end latency of what arrived on /reid/protected (camera
stamp to arrival). Writes ``soak.csv``, ``soak.json`` (summary: RSS growth after warm-up per node)
and ``soak.png``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
NODES = ("store_node", "detector_node", "protector_node", "egress_node")


def _frames(first: int, count: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(VTEST)
    out, i = [], 0
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if i >= first:
            out.append(frame)
        i += 1
    cap.release()
    if not out:
        raise SystemExit(f"{VTEST}: no frames (install Debian opencv-doc)")
    return out


def _proc_stats(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, threads, open fds) of a live process, from /proc."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss / 1024, threads, len(os.listdir(f"/proc/{pid}/fd"))


def _build_store(cfg_file: Path) -> None:
    import torch

    from latent_rag_ros.config import load_config
    from latent_rag_ros.datasets import Sample
    from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
    from latent_rag_ros.people import crop_people
    from latent_rag_ros.store.build import BuildPlan, build_store

    cfg = load_config(cfg_file)
    models = build_models(cfg, "cpu", with_encoder=True)
    det = build_detector(cfg)
    samples = [Sample(image=p.crop, name=f"vtest#f{i}_b{j}", frame=i)
               for i, fr in zip(range(0, 200, 5), _frames(0, 200)[::5])
               for j, p in enumerate(crop_people(det, fr, cfg.detector))]
    with torch.no_grad():
        build_store(BuildPlan(samples, cfg.store.path, models.reid, models.latent_encoder, batch_size=8,
                              built_with=model_fingerprint(models), progress=False))


def _plot(rows: list[dict], lat_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    for name in NODES:
        r = [x for x in rows if x["node"] == name]
        t = [x["t_s"] / 60 for x in r]
        axes[0].plot(t, [x["rss_mib"] for x in r], label=name)
        axes[1].plot(t, [x["threads"] for x in r], label=name)
        axes[2].plot(t, [x["fds"] for x in r], label=name)
    axes[3].plot([x["t_s"] / 60 for x in lat_rows], [x["p50_ms"] for x in lat_rows], label="p50")
    axes[3].plot([x["t_s"] / 60 for x in lat_rows], [x["p99_ms"] for x in lat_rows], label="p99")
    for ax, label in zip(axes, ("RSS (MiB)", "threads", "open fds", "camera -> /reid/protected (ms)")):
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[3].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    """Run the soak and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of replay (30 min by default)")
    ap.add_argument("--rate", type=float, default=10.0, help="camera frames per second")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=120.0, help="RSS growth is measured from here on")
    ap.add_argument("--models", default="demo", choices=["demo", "random"])
    ap.add_argument("--out", default="soak_out")
    args = ap.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "93")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    cfg_file = tmp / "params.yaml"
    cfg_file.write_text(
        "/**:\n  ros__parameters:\n"
        f"    models: {{generator: {args.models}, latent_encoder: {args.models}}}\n"
        f"    store: {{path: {tmp / 'store'}}}\n"
        "    detector: {max_crops: 2}\n"
        "    protector: {device: cpu}\n"
        "    ros: {status_period_s: 2.0}\n")
    _build_store(cfg_file)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from latent_rag_ros.config import CAMERA_TOPIC, CROPS_TOPIC, EGRESS_TOPIC, use_fastdds_profile
    from latent_rag_ros.msg import ProtectedCrop
    from latent_rag_ros.nodes.common import bgr_to_image
    from latent_rag_ros.nodes.graph import Graph

    use_fastdds_profile()
    frames = [bgr_to_image(f) for f in _frames(500, 200)]
    graph = Graph()
    graph.start(NODES, str(cfg_file), log_dir=str(out / "logs"))
    rclpy.init()
    node = rclpy.create_node("soak_probe")
    lat: list[float] = []
    lock = threading.Lock()

    def on_protected(msg: ProtectedCrop) -> None:
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            lat.append((now - stamp) / 1e6)

    status: dict[str, dict[str, str]] = {}

    def on_diag(arr: DiagnosticArray) -> None:
        for st in arr.status:
            status[st.name.split(": ")[-1]] = {kv.key: kv.value for kv in st.values}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    node.create_subscription(ProtectedCrop, EGRESS_TOPIC, on_protected,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    # the graph's own default names (config.py), so the soak follows them when they change
    cam = node.create_publisher(Image, CAMERA_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    deadline = time.monotonic() + 300
    while node.count_subscribers(CROPS_TOPIC) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)   # the protector subscribes once its models are loaded
    rows: list[dict] = []
    lat_rows: list[dict] = []
    sent = 0
    t_start = time.monotonic()
    next_sample = t_start
    try:
        while (now := time.monotonic()) - t_start < args.duration:
            msg = frames[sent % len(frames)]
            msg.header.stamp = node.get_clock().now().to_msg()
            cam.publish(msg)
            sent += 1
            if now >= next_sample:
                t_s = round(now - t_start, 1)
                for name, p in graph.procs.items():
                    if p.poll() is None:
                        rss, thr, fds = _proc_stats(p.pid)
                        rows.append({"t_s": t_s, "node": name, "rss_mib": round(rss, 1), "threads": thr, "fds": fds})
                with lock:
                    window, lat[:] = list(lat), []
                lat_rows.append({"t_s": t_s, "received": len(window), "sent": sent,
                                 "p50_ms": round(float(np.percentile(window, 50)), 1) if window else float("nan"),
                                 "p99_ms": round(float(np.percentile(window, 99)), 1) if window else float("nan")})
                print(f"[soak] {t_s:7.0f} s  sent {sent}  received {len(window)} in window  "
                      + "  ".join(f"{r['node']}:{r['rss_mib']}MiB" for r in rows[-len(graph.procs):]), flush=True)
                next_sample += args.sample_s
            time.sleep(max(0.0, t_start + sent / args.rate - time.monotonic()))
    finally:
        died = graph.failed()
        codes = graph.stop()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    with open(out / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["t_s", "node", "rss_mib", "threads", "fds"])
        w.writeheader()
        w.writerows(rows)
    with open(out / "latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["t_s", "received", "sent", "p50_ms", "p99_ms"])
        w.writeheader()
        w.writerows(lat_rows)
    summary: dict = {"duration_s": args.duration, "rate_hz": args.rate, "frames_sent": sent, "models": args.models,
                     "warmup_s": args.warmup_s, "nodes_died": died, "exit_codes": codes, "per_node": {}}
    for name in NODES:
        r = [x for x in rows if x["node"] == name]
        after = [x for x in r if x["t_s"] >= args.warmup_s] or r
        if not after:
            continue
        base, last = after[0], after[-1]
        summary["per_node"][name] = {
            "rss_mib_after_warmup": base["rss_mib"], "rss_mib_end": last["rss_mib"],
            "rss_mib_max": max(x["rss_mib"] for x in after),
            "rss_growth_pct": round(100 * (last["rss_mib"] - base["rss_mib"]) / base["rss_mib"], 2),
            "threads_start_end": [base["threads"], last["threads"]], "fds_start_end": [base["fds"], last["fds"]]}
    good = [x for x in lat_rows if x["received"]]
    summary["protected_received"] = sum(x["received"] for x in lat_rows)
    summary["latency_p50_ms_median_window"] = float(np.median([x["p50_ms"] for x in good])) if good else None
    summary["latency_p99_ms_max_window"] = max(x["p99_ms"] for x in good) if good else None
    summary["final_status"] = {n: {k: v for k, v in st.items() if not k.startswith("latency_ms") or k.endswith("mean")}
                               for n, st in status.items()}
    (out / "soak.json").write_text(json.dumps(summary, indent=1))
    _plot(rows, lat_rows, out / "soak.png")
    print(json.dumps(summary, indent=1))
    if not summary["protected_received"]:
        # a soak that measured memory of an idle graph proves nothing: say so and fail
        print("[soak] error: nothing arrived on the egress topic; the graph never protected a crop", flush=True)
        return 2
    return 0 if not died else 1


if __name__ == "__main__":
    raise SystemExit(main())
