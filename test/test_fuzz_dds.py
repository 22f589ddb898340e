"""One real-DDS smoke per node with broken input (the in-process fuzzing is in test_fuzz_handlers.py).

Nodes run as separate processes on a private domain; broken messages arrive over the wire between
good ones. Each node must stay up, count the rejections on /diagnostics, and publish nothing that
is not protected. The detector is fed a CompressedImage (JPEG) bag through ``replay_bag``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from latent_rag_ros.egress_auth import EgressTagger, load_key
from latent_rag_ros.eval.bags import BagRecorder, read_images, typestore
from latent_rag_ros.msg import PersonCrop, PersonCrops, ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.egress_node import sign_protected
from latent_rag_ros.nodes.graph import Graph

from rosutil import Probe, node_status, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _jpeg_bag(path: Path, frames: list[np.ndarray]) -> Path:
    ts = typestore()
    T = ts.types
    with BagRecorder(path) as rec:
        conn = rec.add_topic("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage")
        for i, f in enumerate(frames):
            stamp = T["builtin_interfaces/msg/Time"](sec=i, nanosec=0)
            msg = T["sensor_msgs/msg/CompressedImage"](header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="cam"),
                                                       format="jpeg",
                                                       data=np.frombuffer(cv2.imencode(".jpg", f)[1], np.uint8))
            rec.write(conn, (i + 1) * 100_000_000, ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
    return path


def test_detector_takes_a_compressed_bag_and_survives_garbage(tmp_path: Path) -> None:
    frames = vtest_frames([100, 200, 300])
    bag = _jpeg_bag(tmp_path / "jpeg_bag", frames)
    got = [f for _t, _s, f in read_images(bag)]   # the evaluation's read side decodes it too
    assert len(got) == 3 and got[0].shape == frames[0].shape
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"camera_topic": "/cam", "camera_transport": "compressed",
                                                     "camera_qos": {"reliability": "reliable", "depth": 5},
                                                     "status_period_s": 0.3}})
    graph = Graph()
    graph.start(["detector_node"], str(cfg))
    probe = Probe("dds_fuzz_detector")
    try:
        crops = probe.collect(PersonCrops, "/latent_rag/crops")
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(CompressedImage, "/cam/compressed", RELIABLE)
        wait_for(lambda: pub.get_subscription_count() > 0, 60, "detector subscription on /cam/compressed")
        for data in (b"", b"\xff\xd8\xff\xe0garbage", bytes(range(256)) * 50):
            pub.publish(CompressedImage(format="jpeg", data=data))
        wait_for(lambda: int(node_status(diags, "detector_node").get("frames_invalid", 0)) >= 1, 60,
                 "garbage counted as frames_invalid")
        # the bag's JPEG frames, played the way `latent-rag replay` plays a camera bag (in a process of
        # its own: it waits for "a publisher on the egress topic", here the detector's crops topic)
        code = ("import sys; from latent_rag_ros.nodes.replay import ReplayPlan, replay_bag; r = replay_bag(ReplayPlan("
                "sys.argv[1], sys.argv[2], camera_topic='/cam', egress_topic='/latent_rag/crops', wait_subscribed=(), "
                "first_wait_s=1.0, drain_s=1.0, discovery_timeout=60)); print(r)")
        for i in range(3):
            res = subprocess.run([sys.executable, "-c", code, str(bag), str(tmp_path / f"out{i}")],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr[-2000:]
            assert "'frames_played': 3" in res.stdout and "image_raw/compressed" in res.stdout
            if crops:
                break
        assert crops, "no person crops from the compressed camera"
        assert not graph.failed()
    finally:
        graph.stop()
        probe.close()


def _protected(ok: bool, i: int) -> ProtectedCrop:
    msg = ProtectedCrop(m=3, steps=2, label=f"\u4eba{i}")
    msg.image = bgr_to_image(np.full((8, 4, 3), i, np.uint8), encoding="rgb8")
    msg.embedding = [0.5, 0.5] if ok else [[math.nan], [math.inf], []][i % 3]
    if not ok and i % 2:
        msg.image.data = bytes(msg.image.data)[:-1]   # a truncated image
    return msg


def test_egress_over_dds_forwards_only_complete_protected_crops(tmp_path: Path) -> None:
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"status_period_s": 0.3}})
    graph = Graph()
    graph.start(["egress_node"], str(cfg))
    probe = Probe("dds_fuzz_egress")
    try:
        out = probe.collect(ProtectedCrop, "/reid/protected", RELIABLE)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(ProtectedCrop, "/latent_rag/protected", RELIABLE)
        wait_for(lambda: pub.get_subscription_count() > 0 and probe.node.count_publishers("/reid/protected") > 0,
                 60, "egress node")
        time.sleep(0.5)
        # tagged like the protector does, with the graph's per-run key: these reach the content checks
        tagger = EgressTagger(load_key(Path(graph.run_key_dir) / "egress.key", create=False))
        for i in range(12):
            msg = _protected(i % 2 == 0, i)
            sign_protected(tagger, msg)
            pub.publish(msg)
            time.sleep(0.05)
        wait_for(lambda: int(node_status(diags, "egress_node").get("frames_in", 0)) >= 12, 60, "12 frames in egress")
        wait_for(lambda: len(out) >= 6, 30, "6 forwarded")
        st = node_status(diags, "egress_node")
        assert st["dropped_invalid"] == "6" and st["frames_out"] == "6"
        assert all(len(m.embedding) == 2 and len(m.image.data) == m.image.step * m.image.height for m in out)
        assert not graph.failed()
    finally:
        graph.stop()
        probe.close()


def test_protector_over_dds_rejects_bad_crops_and_publishes_nothing_without_a_store(tmp_path: Path) -> None:
    cfg = write_params(tmp_path / "p.yaml", {
        "models": {"generator": "random", "latent_encoder": "random"},
        "protector": {"m": 2, "steps": 1, "device": "cpu"},
        "ros": {"status_period_s": 0.3, "service_timeout_s": 0.5,
                "retrieve_service": "/nobody/retrieve"}})
    graph = Graph()
    graph.start(["protector_node"], str(cfg))
    probe = Probe("dds_fuzz_protector")
    try:
        out = probe.collect(ProtectedCrop, "/latent_rag/protected", RELIABLE)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(PersonCrops, "/latent_rag/crops", RELIABLE)
        wait_for(lambda: pub.get_subscription_count() > 0, 120, "protector subscription (models loaded)")
        good = bgr_to_image(vtest_frames([300])[0][100:228, 300:364])
        bad_img = Image(height=5, width=5, encoding="weird", step=15, data=bytes(75))
        crops = [
            PersonCrop(image=good, box=RegionOfInterest(x_offset=300, y_offset=100, width=64, height=128), label="ok"),
            PersonCrop(image=bad_img, box=RegionOfInterest(width=5, height=5)),
            PersonCrop(image=good, box=RegionOfInterest(x_offset=2**32 - 10, y_offset=0, width=64, height=128)),
            PersonCrop(image=good, box=RegionOfInterest(width=64, height=128), label="\u00e9" * 300),
        ]
        for _ in range(3):
            pub.publish(PersonCrops(crops=crops))
            time.sleep(0.5)
        wait_for(lambda: int(node_status(diags, "protector_node").get("crops_invalid", 0)) >= 3, 60, "crops_invalid")
        wait_for(lambda: node_status(diags, "protector_node").get("store_reachable") == "False", 60,
                 "store_reachable=False on /diagnostics")
        assert not out, "a protector without a store must publish nothing"
        assert not graph.failed()
    finally:
        graph.stop()
        probe.close()
