"""Replay a bag's camera topic into the running graph and record /reid/protected into a new bag.

Raw CDR bytes go straight from the input bag to the wire and from the wire into the output bag
(rclpy publishes and receives serialized messages), so nothing is re-encoded. On a real ROS 2
install ``ros2 bag play`` / ``ros2 bag record`` do the same job.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

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


def replay_bag(
    bag_in: str,
    bag_out: str,
    camera_topic: str = CAMERA_TOPIC,
    egress_topic: str = EGRESS_TOPIC,
    source_topic: str | None = None,
    rate: float = 1.0,
    storage: str = "sqlite3",
    discovery_timeout: float = 20.0,
    drain_s: float = 10.0,
    max_wait_s: float = 600.0,
    wait_subscribed: tuple[str, ...] = (CROPS_TOPIC,),
    first_wait_s: float = 120.0,
) -> dict[str, float]:
    """Publish the bag's frames at ``rate`` x recorded speed; record what arrives on ``egress_topic``.

    A CompressedImage camera topic is played on ``<camera_topic>/compressed`` (image_transport's
    name; the detector listens there with ``ros.camera_transport: compressed``).

    Waits for the graph before playing (a camera subscriber, an egress publisher, and a subscriber
    on each of ``wait_subscribed``: the protector subscribes to the crops only once its models are
    loaded). After the last frame it waits up to ``first_wait_s`` for the first output, then until
    nothing new arrived for ``drain_s`` s (at most ``max_wait_s`` in all).
    """
    from latent_rag_ros.bagio import BagRecorder

    src_topic, src_type, frames = _camera_messages(bag_in, source_topic)
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
        deadline = time.monotonic() + discovery_timeout
        def missing() -> list[str]:
            out = [] if pub.get_subscription_count() else [f"a subscriber on {camera_topic}"]
            out += [] if node.count_publishers(egress_topic) else [f"a publisher on {egress_topic}"]
            return out + [f"a subscriber on {t}" for t in wait_subscribed if not node.count_subscribers(t)]

        while time.monotonic() < deadline and missing():
            time.sleep(0.05)
        if missing():
            raise TimeoutError(f"graph not ready after {discovery_timeout:.0f} s: no {', '.join(missing())}")
        t_start = time.monotonic()
        t0 = frames[0][0] if frames else 0
        for t, raw in frames:
            due = t_start + (t - t0) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.publish(raw)
        play_s = time.monotonic() - t_start
        end = time.monotonic() + max_wait_s
        first_end = time.monotonic() + first_wait_s
        while not received and time.monotonic() < min(end, first_end):
            time.sleep(0.1)  # the first protected crops of a CPU protector take a while
        while received and time.monotonic() < end and time.monotonic() - last_rx[0] < drain_s:
            time.sleep(0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        if own_init:
            rclpy.try_shutdown()
    with BagRecorder(bag_out, storage) as rec:
        conn = rec.add_topic(egress_topic, PROTECTED_TYPE)
        for t, raw in received:
            rec.write(conn, t, raw)
    return {"frames_played": len(frames), "protected_received": len(received), "play_s": play_s,
            "source_topic": src_topic}
