"""egress_node: the only publisher of /reid/protected (egress zone: protected data only).

It subscribes to the protector's topic with the ProtectedCrop type, forwards a message only when its
HMAC tag proves this robot's protector made it (latent_rag_ros/egress_auth.py) and it is well-formed
(image present, finite embedding), then strips the tag and, unless ``ros.evaluation_mode`` is on,
the evaluation-only fields (identity label, stage timings). Anything else is dropped and counted in
/diagnostics. It runs in the egress zone: SHM to hear the host-local protector, UDP to the network.

Egress topics (readable off the robot): ``ros.egress_topic`` (/reid/protected), the optional
``ros.egress_image_topic`` (the same protected image as a plain sensor_msgs/Image, for rviz/rqt,
published only after the same checks) and ``ros.heartbeat_topic`` (/reid/heartbeat: a
DiagnosticStatus at a fixed rate with counters and whether a protector is connected, so a remote
service can tell "nobody in view" from "protector down"; it carries nothing about any person).
"""

from __future__ import annotations

import array
import math
import struct
import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image

from latent_rag_ros.egress_auth import EgressTagger, key_file, load_key
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.common import qos_profile
from latent_rag_ros.nodes.managed import ManagedNode
from latent_rag_ros.zones import EGRESS


def _canonical(value: Any) -> bytes:
    """Deterministic, length-prefixed bytes of a message value (recursively, every field in order)."""
    if hasattr(value, "get_fields_and_field_types"):
        return b"".join(_canonical(getattr(value, f)) for f in value.get_fields_and_field_types())
    if isinstance(value, array.array):
        raw = value.tobytes() if sys.byteorder == "little" else _swapped(value)
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, bool):
        raw = b"\x01" if value else b"\x00"
    elif isinstance(value, int):
        raw = struct.pack("<q", value)
    elif isinstance(value, float):
        raw = struct.pack("<d", value)
    elif isinstance(value, (list, tuple)):
        raw = struct.pack("<Q", len(value)) + b"".join(_canonical(v) for v in value)
    else:
        raise TypeError(f"cannot canonicalise {type(value).__name__}")
    return struct.pack("<Q", len(raw)) + raw


def _swapped(values: array.array) -> bytes:
    copy = array.array(values.typecode, values)
    copy.byteswap()
    return copy.tobytes()


def protected_payload(msg: ProtectedCrop) -> bytes:
    """The bytes the tag covers: every field except ``tag``, canonically encoded.

    Not the CDR serialization: rmw leaves its alignment padding uninitialised, so the same message
    serializes to different bytes in the protector and in egress (measured).
    """
    return b"".join(_canonical(getattr(msg, f)) for f in msg.get_fields_and_field_types() if f != "tag")


def sign_protected(tagger: EgressTagger, msg: ProtectedCrop) -> None:
    """Set ``msg.tag`` to the protector's HMAC over :func:`protected_payload`."""
    msg.tag = list(tagger.tag(protected_payload(msg)))


def strip_for_egress(msg: ProtectedCrop, evaluation_mode: bool) -> ProtectedCrop:
    """The message as it leaves the robot: no tag; no label or timings unless in evaluation mode."""
    msg.tag = []
    if not evaluation_mode:
        msg.label = ""
        msg.stage_names = []
        msg.stage_ms = []
    return msg


def egress_problem(msg: ProtectedCrop) -> str:
    """Why ``msg`` must not leave the robot, or "" when it may."""
    if msg.image.height == 0 or msg.image.width == 0 or len(msg.image.data) == 0:
        return "empty protected image"
    if len(msg.image.data) != msg.image.step * msg.image.height:
        return "protected image data size does not match step*height"
    if msg.image.encoding not in ("rgb8", "bgr8") or msg.image.step < msg.image.width * 3:
        return f"protected image is not a complete rgb8/bgr8 image ({msg.image.encoding[:20]!r}, step {msg.image.step})"
    if len(msg.embedding) == 0:
        return "missing embedding"
    if not all(math.isfinite(v) for v in msg.embedding):
        return "embedding has NaN/inf"
    if msg.steps == 0 and msg.m == 0:
        return "not produced by the protector (m = T = 0)"
    return ""


class EgressNode(ManagedNode):
    """Forwards ProtectedCrop messages, and only those, to the remote re-ID topic (a lifecycle node)."""

    ZONE = EGRESS

    def __init__(self) -> None:
        super().__init__("egress_node")
        self.tagger: EgressTagger | None = None
        self.evaluation_mode = bool(self.cfg.ros.evaluation_mode)
        self.pub = self.image_pub = self.heartbeat_pub = None
        self.sub = self.heartbeat_timer = None
        self.heartbeat_seq = 0

    def configure(self) -> None:
        """Load the egress key; create the (lifecycle) egress publishers, silent until activated."""
        self.tagger = EgressTagger(load_key(key_file()))
        if self.evaluation_mode:
            self.get_logger().warning("EVALUATION MODE: identity labels and stage timings leave the robot")
        qos = qos_profile(self.cfg.ros.output_qos)
        self.pub = self.create_lifecycle_publisher(ProtectedCrop, self.cfg.ros.egress_topic, qos)
        topic = self.cfg.ros.egress_image_topic
        self.image_pub = self.create_lifecycle_publisher(Image, topic, qos) if topic else None
        if self.cfg.ros.heartbeat_topic:
            self.heartbeat_pub = self.create_lifecycle_publisher(DiagnosticStatus, self.cfg.ros.heartbeat_topic, 10)
        self.status.set(DiagnosticStatus.OK, "inactive: configured", model_loaded="n/a",
                        evaluation_mode=self.evaluation_mode)

    def activate(self) -> None:
        """Subscribe to the protector's topic and start the heartbeat."""
        self.sub = self.create_subscription(ProtectedCrop, self.cfg.ros.protected_topic, self.on_protected,
                                            qos_profile(self.cfg.ros.output_qos))
        if self.heartbeat_pub is not None:
            self.heartbeat_timer = self.create_timer(self.cfg.ros.heartbeat_period_s, self.heartbeat)
        self.status.set(DiagnosticStatus.OK, "forwarding")
        self.get_logger().info(f"forwarding {self.cfg.ros.protected_topic} -> {self.cfg.ros.egress_topic}")

    def deactivate(self) -> None:
        """Stop taking protected crops and stop the heartbeat."""
        if self.sub is not None:
            self.destroy_subscription(self.sub)
            self.sub = None
        if self.heartbeat_timer is not None:
            self.destroy_timer(self.heartbeat_timer)
            self.heartbeat_timer = None

    def release(self) -> None:
        """Drop the publishers and the key."""
        for name in ("pub", "image_pub", "heartbeat_pub"):
            pub = getattr(self, name)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        self.tagger = None

    def on_protected(self, msg: ProtectedCrop) -> None:
        """Forward a well-formed protected crop with a valid tag; drop and count anything else."""
        if not self.active or self.tagger is None:
            return
        self.status.count("frames_in")
        if not self.tagger.verify(protected_payload(msg), bytes(msg.tag)):
            self.status.reject("dropped_bad_tag", "missing or invalid integrity tag")
            self.get_logger().warning("not forwarded: missing or invalid integrity tag (not from this "
                                      "robot's protector)", throttle_duration_sec=5.0)
            return
        problem = egress_problem(msg)
        if problem:
            self.status.reject("dropped_invalid", problem)
            self.get_logger().warning(f"not forwarded: {problem}", throttle_duration_sec=5.0)
            return
        out = strip_for_egress(msg, self.evaluation_mode)
        self.pub.publish(out)
        if self.image_pub is not None:
            self.image_pub.publish(out.image)
        self.status.count("frames_out")

    def heartbeat(self) -> None:
        """Publish the egress heartbeat: alive, protector connected or not, counters (no person data)."""
        if not self.active or self.heartbeat_pub is None:
            return
        self.heartbeat_seq += 1
        connected = self.count_publishers(self.cfg.ros.protected_topic) > 0
        counts = self.status.snapshot()
        st = DiagnosticStatus(level=DiagnosticStatus.OK if connected else DiagnosticStatus.ERROR,
                              name="latent_rag_ros egress", hardware_id=self.get_fully_qualified_name(),
                              message="forwarding" if connected else "no protector connected: nothing can be sent")
        st.values = [KeyValue(key="seq", value=str(self.heartbeat_seq)),
                     KeyValue(key="protector_connected", value=str(connected).lower()),
                     KeyValue(key="forwarded", value=counts.get("frames_out", "0")),
                     KeyValue(key="dropped_invalid", value=counts.get("dropped_invalid", "0"))]
        self.heartbeat_pub.publish(st)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros egress_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(EgressNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
