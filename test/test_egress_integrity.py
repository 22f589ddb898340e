"""Egress forwards only what this robot's protector tagged, and strips what must not leave.

A real egress_node process (started by the graph runner, which makes the per-run key) and a probe
that plays the protector: it tags with the key file the graph made, exactly as protector_node does
(``sign_protected``). Untagged, forged-tag and tampered crops must be dropped and counted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy

from latent_rag_ros.egress_auth import KEY_BYTES, EgressKeyError, EgressTagger, load_key, new_run_key
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.egress_node import sign_protected
from latent_rag_ros.nodes.graph import Graph

from rosutil import Probe, wait_for, write_params

pytestmark = pytest.mark.ros


def _crop(model: str, label: str = "person_7") -> ProtectedCrop:
    msg = ProtectedCrop(embedding_model=model, m=3, steps=2, track_id=7, label=label, store_version="v1",
                        stage_names=["retrieve", "generate"], stage_ms=[1.5, 20.25])
    msg.image.height, msg.image.width, msg.image.encoding, msg.image.step = 4, 2, "rgb8", 6
    msg.image.data = bytes(range(24))
    msg.embedding = [0.6, 0.8]
    return msg


def _egress_status(diags: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for arr in list(diags):
        for st in arr.status:
            if st.name.endswith("egress_node"):
                out = {kv.key: kv.value for kv in st.values}
    return out


@pytest.mark.parametrize("evaluation_mode", [False, True])
def test_egress_forwards_only_tagged_crops(tmp_path: Path, evaluation_mode: bool) -> None:
    cfg = write_params(tmp_path / "params.yaml", {"ros": {"status_period_s": 0.3,
                                                          "evaluation_mode": evaluation_mode}})
    graph = Graph()
    probe = Probe("egress_probe")
    try:
        graph.start(["egress_node"], str(cfg))
        key_path = Path(graph.run_key_dir) / "egress.key"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
        tagger = EgressTagger(load_key(key_path, create=False))
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        out = probe.collect(ProtectedCrop, "/reid/protected", reliable)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(ProtectedCrop, "/latent_rag/protected", reliable)
        wait_for(lambda: pub.get_subscription_count() > 0 and probe.node.count_publishers("/reid/protected") > 0,
                 120, "egress subscription and publisher")
        untagged = _crop("untagged")
        forged = _crop("forged")
        forged.tag = list(os.urandom(32))
        other_key = _crop("other-key")
        sign_protected(EgressTagger(os.urandom(KEY_BYTES)), other_key)
        tampered = _crop("tampered")
        sign_protected(tagger, tampered)
        tampered.image.data = bytes(24)            # changed after the protector tagged it
        genuine = _crop("genuine")
        sign_protected(tagger, genuine)
        for msg in (untagged, forged, other_key, tampered, genuine):
            pub.publish(msg)
        wait_for(lambda: len(out) >= 1 and int(_egress_status(diags).get("dropped_bad_tag", "0")) >= 4,
                 120, "the genuine crop forwarded and four bad ones counted")
        status = _egress_status(diags)
        assert status["evaluation_mode"] == str(evaluation_mode)
        assert int(status["dropped_bad_tag"]) == 4 and int(status["frames_out"]) == 1
    finally:
        graph.stop()
        probe.close()
    assert [m.embedding_model for m in out] == ["genuine"]
    sent = out[0]
    assert len(sent.tag) == 0 and bytes(sent.image.data) == bytes(range(24))
    if evaluation_mode:
        assert sent.label == "person_7" and list(sent.stage_names) == ["retrieve", "generate"]
    else:
        assert sent.label == "" and len(sent.stage_names) == 0 and len(sent.stage_ms) == 0
    assert graph.run_key_dir is None and not key_path.exists(), "the per-run key outlived the graph"


def test_egress_key_files_are_private(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    path = new_run_key(env)
    assert env["LATENT_RAG_EGRESS_KEY_FILE"] == str(path) and len(load_key(path, create=False)) == KEY_BYTES
    shared = tmp_path / "k" / "egress.key"
    first = load_key(shared)                       # created on first use, then the same for everyone
    assert load_key(shared) == first and stat.S_IMODE(shared.stat().st_mode) == 0o600
    shared.chmod(0o644)
    with pytest.raises(EgressKeyError, match="mode 0600"):
        load_key(shared)
    with pytest.raises(EgressKeyError, match="missing"):
        load_key(tmp_path / "none" / "egress.key", create=False)
