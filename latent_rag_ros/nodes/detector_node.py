"""detector_node: camera frames in, person crops out (raw crops never leave the robot).

Latest frame wins: the subscription callback only parks the newest frame; a worker thread detects
on it. Frames overwritten before the worker reached them are counted as drops. A lifecycle node
(nodes/managed.py): the detector loads in ``configure``, frames are taken only while active.
"""

from __future__ import annotations

import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from latent_rag_ros.models.factory import build_detector
from latent_rag_ros.msg import PersonCrop, PersonCrops
from latent_rag_ros.nodes.common import (
    LatestSlot,
    bgr_to_image,
    camera_to_bgr,
    frame_limits,
    now_ms,
    qos_profile,
)
from latent_rag_ros.nodes.managed import ManagedNode
from latent_rag_ros.people import crop_people


class DetectorNode(ManagedNode):
    """Detects people in camera frames and publishes their crops (a lifecycle node: nodes/managed.py)."""

    def __init__(self) -> None:
        super().__init__("detector_node")
        self.detector = None
        self.pub = None
        self.sub = None
        self.frame_index = 0
        self.limits = frame_limits(self.cfg)
        # compressed: sensor_msgs/CompressedImage on <camera_topic>/compressed (image_transport's name)
        self.compressed = self.cfg.ros.camera_transport == "compressed"
        self.camera_topic = self.cfg.ros.camera_topic + ("/compressed" if self.compressed else "")

    def configure(self) -> None:
        """Load the detector; the crops publisher exists from here on but sends nothing until activated."""
        self.detector = build_detector(self.cfg)
        self.pub = self.create_lifecycle_publisher(PersonCrops, self.cfg.ros.crops_topic,
                                                   qos_profile(self.cfg.ros.output_qos))
        self.status.set(DiagnosticStatus.OK, "inactive: configured", model_loaded=True, detector=self.cfg.detector.kind)

    def activate(self) -> None:
        """Subscribe to the camera and start the worker."""
        self.start_worker(self._run, "detector", 1)
        self.sub = self.create_subscription(
            CompressedImage if self.compressed else Image, self.camera_topic, self.on_image,
            qos_profile(self.cfg.ros.camera_qos)
        )
        self.status.set(DiagnosticStatus.OK, "waiting for frames")
        self.get_logger().info(
            f"detecting people on {self.camera_topic} ({self.cfg.ros.camera_qos.reliability}) "
            f"-> {self.cfg.ros.crops_topic}"
        )

    def deactivate(self) -> None:
        """Unsubscribe from the camera and join the worker."""
        if self.sub is not None:
            self.destroy_subscription(self.sub)
            self.sub = None
        self.stop_worker(10.0)

    def release(self) -> None:
        """Drop the detector and the crops publisher."""
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
            self.pub = None
        self.detector = None
        self.status.set(self.status.level, self.status.message, model_loaded=False)

    def on_image(self, msg: Image | CompressedImage) -> None:
        """Park the newest frame for the worker (older unprocessed frames are dropped)."""
        slot = self.slot
        if slot is None or slot.closed:
            return
        self.status.count("frames_in")
        if not slot.put(msg):
            self.status.count("frames_dropped")

    def _run(self, slot: LatestSlot) -> None:
        while rclpy.ok() and not slot.closed:
            msg = slot.get()
            stale = slot.take_stale()
            if stale:   # waited longer than ros.max_frame_age_s: dropped, counted
                self.status.count("frames_stale", stale)
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
        if out.crops and self.active:
            self.send(self.pub, out, "frames_unheard")   # nobody subscribed (protector down): lost, counted
            self.status.count("frames_out")
            self.status.count("crops_out", len(out.crops))
        self.status.set(DiagnosticStatus.OK, "running")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros detector_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(DetectorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
