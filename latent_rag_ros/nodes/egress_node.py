"""egress_node: the only publisher of /reid/protected.

It subscribes to the protector's internal topic with the ProtectedCrop type (so nothing else can
arrive), checks each message is well-formed (image present, finite embedding), and forwards it with
reliable QoS. Anything malformed is dropped and counted.
"""

from __future__ import annotations

import math

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.common import NodeStatus, declare_config, qos_profile


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


class EgressNode(Node):
    """Forwards ProtectedCrop messages, and only those, to the remote re-ID topic."""

    def __init__(self) -> None:
        super().__init__("egress_node")
        self.cfg = declare_config(self)
        self.status = NodeStatus(self, self.cfg.ros.status_period_s)
        qos = qos_profile(self.cfg.ros.output_qos)
        self.pub = self.create_publisher(ProtectedCrop, self.cfg.ros.egress_topic, qos)
        self.sub = self.create_subscription(ProtectedCrop, self.cfg.ros.protected_topic, self.on_protected, qos)
        self.status.set(DiagnosticStatus.OK, "forwarding", model_loaded="n/a")
        self.get_logger().info(f"forwarding {self.cfg.ros.protected_topic} -> {self.cfg.ros.egress_topic}")

    def on_protected(self, msg: ProtectedCrop) -> None:
        """Forward a well-formed protected crop; drop and count anything else."""
        self.status.count("frames_in")
        problem = egress_problem(msg)
        if problem:
            self.status.reject("dropped_invalid", problem)
            self.get_logger().warning(f"not forwarded: {problem}", throttle_duration_sec=5.0)
            return
        self.pub.publish(msg)
        self.status.count("frames_out")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros egress_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(EgressNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
