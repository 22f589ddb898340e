"""Egress extras over real DDS: the plain sensor_msgs/Image sibling topic and the heartbeat.

The probe plays the protector (it publishes ProtectedCrop on the internal topic): only well-formed
crops reach /reid/protected and the Image sibling; the heartbeat comes at a fixed rate, says whether
a protector is connected, and carries counters only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.egress_auth import EgressTagger, load_key
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.egress_node import sign_protected
from latent_rag_ros.nodes.graph import Graph

from rosutil import Probe, wait_for, write_params

pytestmark = pytest.mark.ros


def _crop(ok: bool) -> ProtectedCrop:
    msg = ProtectedCrop(embedding_model="test", m=3, steps=2, label="", track_id=-1)
    msg.image.height, msg.image.width, msg.image.encoding, msg.image.step = 4, 2, "rgb8", 6
    msg.image.data = bytes(range(24))
    msg.embedding = [1.0, 0.0, 0.0] if ok else []
    return msg


def test_image_sibling_and_heartbeat(tmp_path: Path) -> None:
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"egress_image_topic": "/reid/protected_image",
                                                     "heartbeat_period_s": 0.2}})
    graph = Graph()
    graph.start(["egress_node"], str(cfg))
    probe = Probe("egress_probe")
    try:
        beats = probe.collect(DiagnosticStatus, "/reid/heartbeat")
        out = probe.collect(ProtectedCrop, "/reid/protected")
        images = probe.collect(Image, "/reid/protected_image")
        wait_for(lambda: len(beats) >= 2, 120, "heartbeats")
        first = {kv.key: kv.value for kv in beats[-1].values}
        assert first["protector_connected"] == "false" and beats[-1].level == DiagnosticStatus.ERROR
        assert set(first) == {"seq", "protector_connected", "forwarded", "dropped_invalid"}  # no person data
        fake_protector = probe.node.create_publisher(ProtectedCrop, "/latent_rag/protected",
                                                     QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        wait_for(lambda: fake_protector.get_subscription_count() > 0 and probe.node.count_publishers(
            "/reid/protected_image") > 0, 60, "egress subscription")
        wait_for(lambda: {kv.key: kv.value for kv in beats[-1].values}["protector_connected"] == "true", 30,
                 "heartbeat to see the protector")
        tagger = EgressTagger(load_key(Path(graph.run_key_dir) / "egress.key", create=False))
        bad, good = _crop(ok=False), _crop(ok=True)
        sign_protected(tagger, bad)   # tagged by "the protector" but malformed: still dropped
        sign_protected(tagger, good)
        fake_protector.publish(bad)
        fake_protector.publish(good)
        wait_for(lambda: len(out) == 1 and len(images) == 1, 30, "the forwarded crop and its image")
        assert bytes(images[0].data) == bytes(range(24)) and images[0].encoding == "rgb8"
        wait_for(lambda: {kv.key: kv.value for kv in beats[-1].values}.get("dropped_invalid") == "1", 30,
                 "heartbeat counters")
        last = {kv.key: kv.value for kv in beats[-1].values}
        assert last["forwarded"] == "1" and beats[-1].level == DiagnosticStatus.OK
        assert int(last["seq"]) > int(first["seq"])
        assert len(out) == 1 and len(images) == 1  # the malformed crop went nowhere
    finally:
        probe.close()
        codes = graph.stop()
    assert codes == {"egress_node": 0}
