"""Replay a bag's camera topic into the running graph and record /reid/protected into a new bag.

Raw CDR bytes go straight from the input bag to the wire and from the wire into the output bag
(rclpy publishes and receives serialized messages), so nothing is re-encoded. On a real ROS 2
install ``ros2 bag play`` / ``ros2 bag record`` do the same job. A :class:`ReplayPlan` says what to
play and record; :func:`replay_bag` runs it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from latent_rag_ros import plans
from latent_rag_ros.bagio import STORAGES, BagRecorder
from latent_rag_ros.config import CAMERA_TOPIC, CROPS_TOPIC, EGRESS_TOPIC
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.zones import INTERNAL, apply_zone

PROTECTED_TYPE = "latent_rag_ros/msg/ProtectedCrop"


CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _camera_messages(bag: str, topic: str | None) -> tuple[str, str, list[tuple[int, bytes]]]:
    """(topic, message type, [(time ns, raw CDR)]) of the bag's first Image or CompressedImage topic."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bag)]) as reader:
        conns = [c for c in reader.connections if c.msgtype in CAMERA_TYPES and (topic in (None, c.topic))]
        if not conns:
            raise ValueError(f"{bag}: no sensor_msgs/Image or CompressedImage topic{' ' + topic if topic else ''}")
        name, msgtype = conns[0].topic, conns[0].msgtype
        msgs = [(t, bytes(raw)) for c, t, raw in reader.messages(connections=[conns[0]])]
    return name, msgtype, msgs


@dataclass(frozen=True)
class ReplayPlan:
    """What one replay does (the fields were ``replay_bag``'s parameters); a bad field raises PlanError.

    ``bag_in``: a bag with a sensor_msgs Image or CompressedImage topic (``source_topic``, else the
    first such topic); ``bag_out``: a new bag (it must not exist) recording what arrives on
    ``egress_topic``. Frames are played at ``rate`` x recorded speed on ``camera_topic`` (a
    CompressedImage topic on ``<camera_topic>/compressed``, image_transport's name; the detector
    listens there with ``ros.camera_transport: compressed``). Play starts once the graph is up (a
    camera subscriber, an egress publisher and a subscriber on each of ``wait_subscribed``: the
    protector subscribes to the crops only once its models are loaded), at most
    ``discovery_timeout`` s. After the last frame: up to ``first_wait_s`` for the first output, then
    until nothing new arrived for ``drain_s`` s (at most ``max_wait_s`` in all).
    """

    bag_in: str | os.PathLike[str]
    bag_out: str | os.PathLike[str]
    camera_topic: str = CAMERA_TOPIC
    egress_topic: str = EGRESS_TOPIC
    source_topic: str | None = None
    rate: float = 1.0
    storage: str = "sqlite3"
    discovery_timeout: float = 20.0
    drain_s: float = 10.0
    max_wait_s: float = 600.0
    wait_subscribed: tuple[str, ...] = (CROPS_TOPIC,)
    first_wait_s: float = 120.0

    def __post_init__(self) -> None:
        plans.path(self, "bag_in")
        plans.require(self, "bag_in", Path(self.bag_in).exists(), "an existing bag (folder or storage file)")
        plans.path(self, "bag_out")
        plans.require(self, "bag_out", not Path(self.bag_out).exists(),
                      "a path that does not exist yet (a bag is never overwritten)")
        plans.text(self, "camera_topic")
        plans.text(self, "egress_topic")
        plans.text(self, "source_topic", optional=True)
        plans.positive(self, "rate")
        plans.one_of(self, "storage", STORAGES)
        for name in ("discovery_timeout", "drain_s", "max_wait_s", "first_wait_s"):
            plans.non_negative(self, name)
        if isinstance(self.wait_subscribed, list):
            object.__setattr__(self, "wait_subscribed", tuple(self.wait_subscribed))
        plans.require(self, "wait_subscribed", isinstance(self.wait_subscribed, tuple) and all(
            isinstance(t, str) and t.strip() for t in self.wait_subscribed), "a tuple of topic names")


def replay_bag(plan: ReplayPlan) -> dict[str, float]:
    """Play ``plan.bag_in``'s camera frames into the graph and record the egress topic into ``plan.bag_out``.

    Returns ``{"frames_played", "protected_received", "play_s", "source_topic"}``.
    """
    camera_topic, egress_topic, rate = plan.camera_topic, plan.egress_topic, plan.rate
    src_topic, src_type, frames = _camera_messages(str(plan.bag_in), plan.source_topic)
    compressed = src_type.endswith("CompressedImage")
    camera_topic = camera_topic + "/compressed" if compressed else camera_topic
    own_init = not rclpy.ok()
    if own_init:
        apply_zone(INTERNAL)  # raw camera frames: a robot-internal participant (host-local, SHM only)
        rclpy.init()
    node = Node("latent_rag_replay")
    received: list[tuple[int, bytes]] = []
    last_rx = [time.monotonic()]
    lock = threading.Lock()

    def on_protected(raw: bytes) -> None:
        with lock:
            received.append((time.time_ns(), bytes(raw)))
            last_rx[0] = time.monotonic()

    pub = node.create_publisher(CompressedImage if compressed else Image, camera_topic,
                                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(ProtectedCrop, egress_topic, on_protected, 100, raw=True)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + plan.discovery_timeout
        def missing() -> list[str]:
            out = [] if pub.get_subscription_count() else [f"a subscriber on {camera_topic}"]
            out += [] if node.count_publishers(egress_topic) else [f"a publisher on {egress_topic}"]
            return out + [f"a subscriber on {t}" for t in plan.wait_subscribed if not node.count_subscribers(t)]

        while time.monotonic() < deadline and missing():
            time.sleep(0.05)
        if missing():
            raise TimeoutError(f"graph not ready after {plan.discovery_timeout:.0f} s: no {', '.join(missing())}")
        t_start = time.monotonic()
        t0 = frames[0][0] if frames else 0
        for t, raw in frames:
            due = t_start + (t - t0) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.publish(raw)
        play_s = time.monotonic() - t_start
        end = time.monotonic() + plan.max_wait_s
        first_end = time.monotonic() + plan.first_wait_s
        while not received and time.monotonic() < min(end, first_end):
            time.sleep(0.1)  # the first protected crops of a CPU protector take a while
        while received and time.monotonic() < end and time.monotonic() - last_rx[0] < plan.drain_s:
            time.sleep(0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        if own_init:
            rclpy.try_shutdown()
    with BagRecorder(plan.bag_out, plan.storage) as rec:
        conn = rec.add_topic(egress_topic, PROTECTED_TYPE)
        for t, raw in received:
            rec.write(conn, t, raw)
    return {"frames_played": len(frames), "protected_received": len(received), "play_s": play_s,
            "source_topic": src_topic}
