"""Camera frame to ``/reid/protected`` through the running graph at a fixed frame rate (``latent-rag bench e2e``).

A probe node publishes camera frames at a fixed rate, each stamped with its send time (ns), and
listens to the detector's crops (robot-internal) and to the egress topic. Every ProtectedCrop keeps
its camera frame's header, so its stamp names the frame it came from: latency = arrival - stamp.
A fixed rate (not as-fast-as-possible) makes a slow protector show up as dropped frames and fewer
crops per second, as on a robot. The probe is a robot-internal participant (it sees raw frames and
crops); it adds no topic or service.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latent_rag_ros.config import ros_name

NODES = ("store_node", "detector_node", "protector_node", "egress_node")


@dataclass
class Record:
    """What the probe saw in one fixed-rate run (times are ``time.time_ns()`` of this host)."""

    sent: dict[int, int] = field(default_factory=dict)             # stamp ns -> index of the frame in the pool
    detected: dict[int, tuple[int, int]] = field(default_factory=dict)   # stamp -> (crops, arrival ns)
    protected: list[tuple[int, int, tuple[int, int, int, int], dict[str, float]]] = field(default_factory=list)
    # ^ (stamp, arrival ns, box x/y/w/h, per-stage ms when the egress keeps them)
    status: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> latest /diagnostics values
    first_publish_ns: int = 0
    last_publish_ns: int = 0


def _stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def summarize(rec: Record) -> dict[str, Any]:
    """Latency percentiles, crops/s and drops of one run; every protected crop is matched to its frame."""
    matched = [p for p in rec.protected if p[0] in rec.sent]
    lat = np.array([(arr - stamp) / 1e6 for stamp, arr, _, _ in matched], dtype=np.float64)
    frames_protected = len({p[0] for p in matched})
    crops_detected = sum(n for s, (n, _) in rec.detected.items() if s in rec.sent)
    last = max([arr for _, arr, _, _ in matched], default=rec.last_publish_ns)
    span_s = max(1e-9, (last - rec.first_publish_ns) / 1e9)
    replay_s = max(1e-9, (rec.last_publish_ns - rec.first_publish_ns) / 1e9)
    stages: dict[str, list[float]] = {}
    for _, _, _, st in matched:
        for k, v in st.items():
            stages.setdefault(k, []).append(v)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 1) if len(lat) else None

    return {
        "frames_sent": len(rec.sent), "replay_s": round(replay_s, 2),
        "frames_detected": sum(1 for s in rec.detected if s in rec.sent),
        "frames_protected": frames_protected,
        "frames_dropped": len(rec.sent) - frames_protected,
        "crops_detected": crops_detected, "crops_received": len(matched),
        "crops_unmatched": len(rec.protected) - len(matched),
        "crops_lost_after_detection": crops_detected - len(matched),
        "crops_per_s": round(len(matched) / span_s, 4), "span_s": round(span_s, 2),
        "latency_ms_p50": pct(50), "latency_ms_p99": pct(99),
        "latency_ms_min": round(float(lat.min()), 1) if len(lat) else None,
        "latency_ms_max": round(float(lat.max()), 1) if len(lat) else None,
        "stage_ms_median": {k: round(float(np.median(v)), 1) for k, v in stages.items()},
        "node_counters": {n: {k: v for k, v in st.items() if k in _COUNTERS or (k.startswith("latency_ms.")
                                                                                and k.endswith(".mean"))}
                          for n, st in rec.status.items()},
    }


_COUNTERS = {"frames_in", "frames_dropped", "frames_stale", "frames_processed", "frames_out", "crops_in",
             "crops_out", "crops_dropped_store", "errors", "frames_unheard", "crops_unheard"}


def run_fixed_rate(
    frames: Sequence[np.ndarray],
    config_file: str | None,
    overrides: dict[str, Any],
    rate_hz: float,
    duration_s: float,
    log_dir: str | None = None,
    drain_s: float = 10.0,
    max_wait_s: float = 600.0,
    ready_timeout_s: float = 300.0,
    first_wait_s: float = 300.0,
) -> Record:
    """Start store, detector, protector and egress; publish ``frames`` (cycled) at ``rate_hz`` for ``duration_s``.

    Publishing starts once the protector subscribes to the crops (its models are loaded and warm).
    After the last frame it waits up to ``first_wait_s`` for a first protected crop, then until nothing
    arrived for ``drain_s`` s or 1.5x the largest latency seen (whichever is longer; at most
    ``max_wait_s`` in all), then stops the graph.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from latent_rag_ros.config import load_config
    from latent_rag_ros.msg import PersonCrops, ProtectedCrop
    from latent_rag_ros.nodes.common import bgr_to_image, qos_profile
    from latent_rag_ros.nodes.graph import Graph
    from latent_rag_ros.zones import INTERNAL, apply_zone

    if rate_hz <= 0 or duration_s <= 0 or not frames:
        raise ValueError("bench e2e: --rate and --duration must be > 0 and at least one frame is needed")
    cfg = load_config(config_file, overrides)
    if cfg.ros.camera_transport != "raw":
        raise ValueError("bench e2e publishes raw sensor_msgs/Image frames: use ros.camera_transport raw")
    camera, crops_topic, egress = (ros_name(t) for t in (cfg.ros.camera_topic, cfg.ros.crops_topic,
                                                         cfg.ros.egress_topic))
    rec = Record()
    lock = threading.Lock()
    graph = Graph()
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    saved_env = dict(os.environ)
    graph.start(NODES, config_file, overrides, env=env, log_dir=log_dir)   # before apply_zone: each node its zone
    own = not rclpy.ok()
    try:
        if own:
            apply_zone(INTERNAL)   # raw camera frames and crops: a robot-internal participant (host-local)
            rclpy.init()
        node = rclpy.create_node("latent_rag_bench_e2e")
    except BaseException:
        graph.stop(timeout=60.0)
        raise

    def on_crops(msg: PersonCrops) -> None:
        with lock:
            rec.detected[_stamp_ns(msg.header)] = (len(msg.crops), time.time_ns())

    def on_protected(msg: ProtectedCrop) -> None:
        now = time.time_ns()
        box = (msg.box.x_offset, msg.box.y_offset, msg.box.width, msg.box.height)
        with lock:
            rec.protected.append((_stamp_ns(msg.header), now, box, dict(zip(msg.stage_names, msg.stage_ms))))

    def on_diag(arr: DiagnosticArray) -> None:
        for st in arr.status:
            rec.status[st.name.split(": ")[-1]] = {kv.key: kv.value for kv in st.values}

    node.create_subscription(PersonCrops, crops_topic, on_crops, QoSProfile(depth=100,
                             reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(ProtectedCrop, egress, on_protected, QoSProfile(depth=100,
                             reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    pub = node.create_publisher(Image, camera, qos_profile(cfg.ros.camera_qos))
    msgs = [bgr_to_image(f) for f in frames]
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + ready_timeout_s
        def protector_listens() -> bool:   # the protector subscribes to the crops once its models are warm
            return any(i.node_name != node.get_name() for i in node.get_subscriptions_info_by_topic(crops_topic))

        while time.monotonic() < deadline and not graph.failed() and not (
                pub.get_subscription_count() and node.count_publishers(egress) and protector_listens()):
            time.sleep(0.1)
        if graph.failed() or time.monotonic() >= deadline:
            raise RuntimeError(f"graph not ready after {ready_timeout_s:.0f} s (dead nodes: {graph.failed()}); "
                               f"see the node logs in {log_dir}")
        n = max(1, round(duration_s * rate_hz))
        t0 = time.monotonic()
        for k in range(n):
            if graph.failed():
                raise RuntimeError(f"a node died during the run: {graph.failed()}; see the node logs in {log_dir}")
            delay = t0 + k / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = msgs[k % len(msgs)]
            stamp = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "camera"
            with lock:
                rec.sent[stamp] = k % len(msgs)
                rec.first_publish_ns = rec.first_publish_ns or stamp
                rec.last_publish_ns = stamp
            pub.publish(msg)
        end = time.monotonic() + max_wait_s
        first_end = time.monotonic() + first_wait_s
        while time.monotonic() < end and not graph.failed():
            with lock:
                last_rx = max([a for _, a in rec.detected.values()] + [a for _, a, _, _ in rec.protected]
                              + [rec.last_publish_ns])
                worst = max([(a - s) / 1e9 for s, a, _, _ in rec.protected], default=0.0)
            waiting_first = not rec.protected and time.monotonic() < first_end   # a slow first batch
            if not waiting_first and (time.time_ns() - last_rx) / 1e9 > max(drain_s, 1.5 * worst):
                break
            time.sleep(0.2)
        time.sleep(max(1.0, 2 * cfg.ros.status_period_s))   # the nodes' last counters on /diagnostics
    finally:
        graph.stop(timeout=60.0)
        executor.shutdown()
        node.destroy_node()
        if own:
            rclpy.try_shutdown()
            os.environ.clear()
            os.environ.update(saved_env)   # the next run's graph gets the caller's environment again
    return rec
