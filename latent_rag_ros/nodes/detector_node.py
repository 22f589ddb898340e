"""detector_node: camera frames in, person crops out (raw crops never leave the robot).

Latest frame wins: the subscription callback only parks the newest frame; a worker thread detects
on it. Frames overwritten before the worker reached them are counted as drops.
"""

from __future__ import annotations

import threading

import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from latent_rag_ros.models.factory import build_detector
from latent_rag_ros.msg import PersonCrop, PersonCrops
from latent_rag_ros.nodes.common import (
    LatestSlot,
    NodeStatus,
    bgr_to_image,
    camera_to_bgr,
    declare_config,
    frame_limits,
    now_ms,
    qos_profile,
)
from latent_rag_ros.people import crop_people


class DetectorNode(Node):
    """Detects people in camera frames and publishes their crops."""

    def __init__(self) -> None:
        super().__init__("detector_node")
        self.cfg = declare_config(self)
        self.status = NodeStatus(self, self.cfg.ros.status_period_s)
        self.detector = build_detector(self.cfg)
        self.status.set(DiagnosticStatus.OK, "waiting for frames", model_loaded=True, detector=self.cfg.detector.kind)
        self.slot = LatestSlot(1, max_age_s=self.cfg.ros.max_frame_age_s)
        self.frame_index = 0
        self.pub = self.create_publisher(PersonCrops, self.cfg.ros.crops_topic, qos_profile(self.cfg.ros.output_qos))
        self.limits = frame_limits(self.cfg)
        # compressed: sensor_msgs/CompressedImage on <camera_topic>/compressed (image_transport's name)
        compressed = self.cfg.ros.camera_transport == "compressed"
        self.camera_topic = self.cfg.ros.camera_topic + ("/compressed" if compressed else "")
        self.sub = self.create_subscription(
            CompressedImage if compressed else Image, self.camera_topic, self.on_image,
            qos_profile(self.cfg.ros.camera_qos)
        )
        self._worker = threading.Thread(target=self._run, name="detector", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"detecting people on {self.camera_topic} ({self.cfg.ros.camera_qos.reliability}) "
            f"-> {self.cfg.ros.crops_topic}"
        )

    def on_image(self, msg: Image | CompressedImage) -> None:
        """Park the newest frame for the worker (older unprocessed frames are dropped)."""
        self.status.count("frames_in")
        if not self.slot.put(msg):
            self.status.count("frames_dropped")

    def _run(self) -> None:
        while rclpy.ok() and not self.slot.closed:
            stale = self.slot.stale
            msg = self.slot.get()
            if self.slot.stale > stale:   # waited longer than ros.max_frame_age_s: dropped, counted
                self.status.count("frames_stale", self.slot.stale - stale)
            if msg is not None:
                self.process(msg)

    def process(self, msg: Image | CompressedImage) -> None:
        """Detect people in one frame and publish their crops (bad frames are logged and skipped)."""
        self.frame_index += 1
        try:
            frame = camera_to_bgr(msg, self.limits)
        except ValueError as exc:
            self.status.reject("frames_invalid", str(exc))
            self.status.set(DiagnosticStatus.WARN, f"bad camera frame: {exc}")
            self.get_logger().warning(f"bad camera frame skipped: {exc}", throttle_duration_sec=5.0)
            return
        t0 = now_ms()
        people = crop_people(self.detector, frame, self.cfg.detector)
        self.status.latency("detect", now_ms() - t0)
        out = PersonCrops(header=msg.header, frame_index=self.frame_index)
        for person in people:
            x0, y0, x1, y1 = person.box
            roi = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0)
            out.crops.append(PersonCrop(header=msg.header, image=bgr_to_image(person.crop, msg.header), box=roi,
                                        score=float(person.score), track_id=-1, label=""))
        self.status.count("frames_processed")
        if out.crops and not self.slot.closed:
            self.pub.publish(out)
            self.status.count("crops_out", len(out.crops))
        self.status.set(DiagnosticStatus.OK, "running")

    def destroy_node(self) -> None:
        # stop the worker before the publishers go away (publishing on a destroyed node aborts);
        # a node whose start-up failed has neither
        if hasattr(self, "slot"):
            self.slot.close()
        if hasattr(self, "_worker"):
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros detector_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(DetectorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
