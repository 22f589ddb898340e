"""Lifecycle (managed) nodes driven through their lifecycle services, as `ros2 lifecycle get/set` drive them.

Real node processes (the graph runner with autostart off: `latent-rag run --no-autostart`) over DDS
on the private domain; the probe calls ``<node>/get_state`` and ``<node>/change_state``
(lifecycle_msgs/srv/GetState, ChangeState). Nothing may leave a node before ``activate`` or after
``deactivate``. "Nothing" is checked without timing: every input carries a sequence mark, and a
marked output from after re-activation proves (reliable, in-order DDS from one writer) that no
output of the inactive period was sent before it.
The detector is the real HOG detector on real vtest.avi frames; egress gets crops tagged with the
graph's per-run key, as the protector tags them; the store is a small real SQLite/FAISS store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.egress_auth import KEY_ENV, EgressTagger, load_key
from latent_rag_ros.msg import PersonCrops, ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.egress_node import sign_protected
from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.srv import RetrieveLatents
from latent_rag_ros.store import open_store

from rosutil import Probe, call, node_status, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
NS = "/latent_rag"
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}


class Managed:
    """`ros2 lifecycle get/set <node>` for one node: GetState and ChangeState service calls."""

    def __init__(self, probe: Probe, node: str) -> None:
        self.probe, self.node = probe, node
        self._get = probe.node.create_client(GetState, f"{node}/get_state")
        self._set = probe.node.create_client(ChangeState, f"{node}/change_state")
        wait_for(lambda: self._get.service_is_ready() and self._set.service_is_ready(), 120, f"{node} lifecycle")

    def get(self) -> str:
        return call(self._get, GetState.Request(), f"{self.node}/get_state").current_state.label

    def set(self, transition: str) -> bool:
        req = ChangeState.Request(transition=Transition(id=TRANSITIONS[transition]))
        fut = self._set.call_async(req)
        wait_for(fut.done, 300, f"{self.node} {transition}")
        return fut.result().success


def _frame(bgr: np.ndarray, mark: str) -> Image:
    msg = bgr_to_image(bgr)
    msg.header.frame_id = mark
    return msg


def test_detector_and_egress_publish_only_while_active(tmp_path: Path) -> None:
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"status_period_s": 0.3}, "detector": {"max_crops": 2}})
    graph = Graph()
    probe = Probe("lifecycle_probe")
    try:
        graph.start(["detector_node", "egress_node"], str(cfg), autostart=False)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        crops = probe.collect(PersonCrops, f"{NS}/crops", RELIABLE)
        forwarded = probe.collect(ProtectedCrop, "/reid/protected", RELIABLE)
        heartbeats = probe.collect(DiagnosticStatus, "/reid/heartbeat", RELIABLE)
        cam = probe.node.create_publisher(Image, f"{NS}/image_raw", RELIABLE)
        prot = probe.node.create_publisher(ProtectedCrop, f"{NS}/protected", RELIABLE)
        det, egr = Managed(probe, f"{NS}/detector_node"), Managed(probe, f"{NS}/egress_node")
        tagger = EgressTagger(load_key(Path(graph.run_key_dir) / "egress.key", create=False))

        def crop(mark: int) -> ProtectedCrop:
            msg = ProtectedCrop(embedding_model="lifecycle", m=2, steps=1, track_id=mark, store_version="v1")
            msg.image.height, msg.image.width, msg.image.encoding, msg.image.step = 2, 2, "rgb8", 6
            msg.image.data = bytes(12)
            msg.embedding = [1.0]
            sign_protected(tagger, msg)
            return msg

        # unconfigured: /diagnostics shows it, no data topic exists, no input is taken
        assert det.get() == "unconfigured" and egr.get() == "unconfigured"
        wait_for(lambda: node_status(diags, "detector_node").get("lifecycle_state") == "unconfigured"
                 and node_status(diags, "egress_node").get("lifecycle_state") == "unconfigured", 60, "diagnostics")
        assert probe.node.count_publishers(f"{NS}/crops") == 0 and probe.node.count_publishers("/reid/protected") == 0
        frames = vtest_frames([400, 440, 480])
        for k, f in enumerate(frames):
            cam.publish(_frame(f, f"pre-{k}"))
            prot.publish(crop(-1 - k))

        # inactive: models/keys loaded, publishers exist, inputs still not taken
        assert det.set("configure") and egr.set("configure")
        assert det.get() == "inactive" and egr.get() == "inactive"
        wait_for(lambda: probe.node.count_publishers(f"{NS}/crops") == 1
                 and probe.node.count_publishers("/reid/protected") == 1, 60, "lifecycle publishers")
        assert cam.get_subscription_count() == 0 and prot.get_subscription_count() == 0
        for k, f in enumerate(frames):
            cam.publish(_frame(f, f"inactive-{k}"))
            prot.publish(crop(-10 - k))
        wait_for(lambda: node_status(diags, "detector_node").get("lifecycle_state") == "inactive"
                 and node_status(diags, "detector_node").get("model_loaded") == "True", 60, "inactive in diagnostics")

        # active: output flows, and it is the first output ever
        assert det.set("activate") and egr.set("activate")
        assert det.get() == "active" and egr.get() == "active"
        wait_for(lambda: cam.get_subscription_count() == 1 and prot.get_subscription_count() == 1, 60, "inputs")
        k = 0
        while not (crops and forwarded):
            cam.publish(_frame(frames[k % len(frames)], f"active-{k}"))
            prot.publish(crop(100 + k))
            k += 1
            assert not graph.failed() and k < 600, f"nothing after activate ({k} inputs): {graph.failed()}"
            time.sleep(0.5)
        assert all(c.header.frame_id.startswith("active-") for c in crops), [c.header.frame_id for c in crops]
        assert all(m.track_id >= 100 for m in forwarded), [m.track_id for m in forwarded]
        wait_for(lambda: len(heartbeats) >= 1, 60, "egress heartbeat")
        assert int({kv.key: kv.value for kv in heartbeats[0].values}["seq"]) == 1   # none sent while inactive

        # deactivated: inputs withdrawn, nothing goes out; re-activated: output resumes, nothing in between
        assert det.set("deactivate") and egr.set("deactivate")
        assert det.get() == "inactive"
        wait_for(lambda: cam.get_subscription_count() == 0 and prot.get_subscription_count() == 0, 60, "inputs gone")
        n_crops, n_fwd, n_hb = len(crops), len(forwarded), len(heartbeats)
        for j, f in enumerate(frames):
            cam.publish(_frame(f, f"off-{j}"))
            prot.publish(crop(-100 - j))
        assert det.set("activate") and egr.set("activate")
        wait_for(lambda: cam.get_subscription_count() == 1 and prot.get_subscription_count() == 1, 60, "inputs")
        while len(crops) == n_crops or len(forwarded) == n_fwd:
            cam.publish(_frame(frames[k % len(frames)], f"again-{k}"))
            prot.publish(crop(1000 + k))
            k += 1
            assert not graph.failed(), graph.failed()
            time.sleep(0.5)
        assert all(c.header.frame_id.startswith("again-") for c in crops[n_crops:]), \
            [c.header.frame_id for c in crops[n_crops:]]
        assert all(m.track_id >= 1000 for m in forwarded[n_fwd:]), [m.track_id for m in forwarded[n_fwd:]]
        assert len(heartbeats) >= n_hb

        # clean-up frees the detector; shutdown finalizes; the process still stops cleanly
        assert det.set("deactivate") and det.set("cleanup") and det.get() == "unconfigured"
        wait_for(lambda: node_status(diags, "detector_node").get("model_loaded") == "False"
                 and node_status(diags, "detector_node").get("lifecycle_state") == "unconfigured", 60, "cleaned up")
        assert det.set("configure") and det.get() == "inactive"     # configurable again
        assert det.set("shutdown") and det.get() == "finalized"
    finally:
        codes = graph.stop()
        probe.close()
    assert all(c == 0 for c in codes.values()), codes


def test_failed_configure_is_reported_and_the_node_stays_unconfigured(tmp_path: Path) -> None:
    """A damaged store (lifecycle manager mode): configure fails, one reason in the log and /diagnostics,
    the services never appear; configure succeeds once the store is repaired. Autostart: fatal + exit 1."""
    store_path = tmp_path / "store"
    store_path.mkdir()
    (store_path / "store.sqlite").write_bytes(b"not a database" * 100)
    keys = tmp_path / "keys"
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"status_period_s": 0.3},
                                             "store": {"path": str(store_path)}, "link": {"keys_dir": str(keys)}})
    graph = Graph()
    probe = Probe("lifecycle_fail_probe")
    try:
        graph.start(["store_node"], str(cfg), autostart=False, log_dir=str(tmp_path / "logs"))
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        store = Managed(probe, f"{NS}/store_node")
        client = probe.node.create_client(RetrieveLatents, f"{NS}/retrieve_latents")
        assert not store.set("configure")
        assert store.get() == "unconfigured"
        wait_for(lambda: "configure failed" in node_status(diags, "store_node").get("_message", ""), 60, "diagnostics")
        st = node_status(diags, "store_node")
        assert str(store_path) in st["_message"] and st["lifecycle_state"] == "unconfigured"
        assert st["_level"] == str(DiagnosticStatus.ERROR)
        log = (tmp_path / "logs" / "store_node.log").read_text()
        assert "configure failed" in log and "Traceback" not in log, log
        assert not graph.failed() and not client.service_is_ready()
        # repaired: a real (empty) store; configure and activate now work and the service appears
        (store_path / "store.sqlite").unlink()
        open_store(store_path, create=True, dim=4, num_ws=2, w_dim=3).close()
        assert store.set("configure") and store.get() == "inactive"
        assert not client.service_is_ready()               # inactive: the service does not exist yet
        assert store.set("activate")
        wait_for(client.service_is_ready, 60, "retrieve_latents after activate")
        assert store.set("deactivate")
        wait_for(lambda: not client.service_is_ready(), 60, "retrieve_latents withdrawn after deactivate")
    finally:
        codes = graph.stop()
        probe.close()
    assert all(c == 0 for c in codes.values()), codes
    # the same damaged store with autostart (what launch and `latent-rag run` do by default)
    for leftover in store_path.iterdir():
        leftover.unlink()
    (store_path / "store.sqlite").write_bytes(b"not a database" * 100)
    proc = subprocess.run([sys.executable, "-m", "latent_rag_ros.nodes.store_node", "--ros-args",
                           "-p", f"config_file:={cfg}"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "RCUTILS_LOGGING_BUFFERED_STREAM": "0", KEY_ENV: ""})
    text = proc.stdout + proc.stderr
    fatal = [line for line in text.splitlines() if "fatal" in line.lower()]
    assert proc.returncode == 1 and len(fatal) == 1 and str(store_path) in fatal[0], text
    assert "Traceback" not in text and "serving" not in text, text


def test_frames_lost_while_the_next_node_is_down_are_counted(tmp_path: Path) -> None:
    """Issue 13: crop messages the detector sends while no protector is subscribed (down, restarting or
    inactive) are lost; they are counted as ``frames_unheard`` (the protector counts protected crops
    nobody took, ``crops_unheard``, the same way). Then a subscriber appears and what it gets is not counted."""
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"status_period_s": 0.3}, "detector": {"max_crops": 1}})
    graph = Graph()
    probe = Probe("unheard_probe")
    try:
        graph.start(["detector_node"], str(cfg))
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        cam = probe.node.create_publisher(Image, f"{NS}/image_raw", RELIABLE)
        wait_for(lambda: cam.get_subscription_count() == 1, 120, "detector active")
        frames = vtest_frames([400, 440, 480])

        def count(key: str) -> int:
            return int(node_status(diags, "detector_node").get(key, 0))

        k = 0
        while count("frames_out") < 2:         # nobody subscribes to crops: every message is lost
            cam.publish(_frame(frames[k % 3], f"alone-{k}"))
            k += 1
            assert k < 600 and not graph.failed(), graph.failed()
            time.sleep(0.5)
        wait_for(lambda: count("frames_out") == count("frames_unheard"), 30, "unheard counted")
        assert count("frames_unheard") >= 2
        alone = count("frames_out")
        got = probe.collect(PersonCrops, f"{NS}/crops", RELIABLE)   # "the protector is back"
        wait_for(lambda: probe.node.count_publishers(f"{NS}/crops") == 1, 60, "crops publisher matched")
        while len(got) < 2:
            cam.publish(_frame(frames[k % 3], f"heard-{k}"))
            k += 1
            assert k < 1200 and not graph.failed(), graph.failed()
            time.sleep(0.5)
        n = len(got)
        wait_for(lambda: count("frames_out") >= alone + n, 30, "status caught up")
        assert count("frames_unheard") <= count("frames_out") - len(got)   # what arrived was not counted lost
    finally:
        graph.stop()
        probe.close()


def test_run_cli_takes_no_autostart() -> None:
    """`latent-rag run --no-autostart` reaches the graph runner (which passes ``-p autostart:=false``)."""
    from latent_rag_ros.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run"]).autostart is True
    assert parser.parse_args(["run", "--no-autostart"]).autostart is False


def test_protector_lifecycle_through_change_state(tmp_path: Path) -> None:
    """The protector (random-weight generator, real re-ID, a real store behind the sealed link) driven by
    ChangeState: no output and no crop subscription before activate, protected crops after, none of the
    crops sent while unconfigured, inactive or deactivated ever come out."""
    import torch
    from sensor_msgs.msg import RegionOfInterest

    from latent_rag_ros.config import load_config
    from latent_rag_ros.models.factory import build_detector, build_models
    from latent_rag_ros.msg import PersonCrop
    from latent_rag_ros.nodes.graph import provision_local_keys
    from latent_rag_ros.people import crop_people

    params = {"models": {"generator": "random", "latent_encoder": "random"},
              "protector": {"m": 2, "steps": 1, "batch_size": 2, "device": "cpu"},
              "store": {"path": str(tmp_path / "store")}, "link": {"keys_dir": str(tmp_path / "keys")},
              "ros": {"service_timeout_s": 10.0, "status_period_s": 0.5}}
    cfg_file = write_params(tmp_path / "p.yaml", params)
    cfg = load_config(cfg_file)
    provision_local_keys(str(cfg_file))
    with torch.no_grad():
        models = build_models(cfg, "cpu", with_encoder=False)
    g, rng = models.generator, np.random.default_rng(0)
    # no built_with: a store that records no models is served to any (the W+ shape is still checked)
    with open_store(cfg.store.path, create=True, dim=models.reid.dim, num_ws=g.num_ws, w_dim=g.w_dim) as store:
        store.add(rng.normal(size=(8, models.reid.dim)).astype(np.float32),
                  rng.normal(size=(8, g.num_ws, g.w_dim)).astype(np.float32))
    person = crop_people(build_detector(cfg), vtest_frames([200])[0], cfg.detector)[0]

    def batch(mark: int) -> PersonCrops:
        x0, y0, x1, y1 = person.box
        return PersonCrops(crops=[PersonCrop(image=bgr_to_image(person.crop), track_id=mark, box=RegionOfInterest(
            x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0))])

    store_graph, graph = Graph(), Graph()
    probe = Probe("protector_lifecycle_probe")
    try:
        store_graph.start(["store_node"], str(cfg_file))
        graph.start(["protector_node"], str(cfg_file), autostart=False)
        out = probe.collect(ProtectedCrop, f"{NS}/protected", RELIABLE)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(PersonCrops, f"{NS}/crops", RELIABLE)
        prot = Managed(probe, f"{NS}/protector_node")
        assert prot.get() == "unconfigured" and probe.node.count_publishers(f"{NS}/protected") == 0
        pub.publish(batch(-1))
        assert prot.set("configure") and prot.get() == "inactive"      # models load and warm up here
        wait_for(lambda: probe.node.count_publishers(f"{NS}/protected") == 1
                 and node_status(diags, "protector_node").get("model_loaded") == "True", 60, "configured")
        assert pub.get_subscription_count() == 0
        pub.publish(batch(-2))
        assert prot.set("activate")
        wait_for(lambda: pub.get_subscription_count() == 1, 60, "crop subscription")
        k = 0
        while not out:
            pub.publish(batch(100 + k))
            k += 1
            assert k < 300 and not graph.failed(), graph.failed()
            time.sleep(1.0)
        assert prot.set("deactivate") and prot.get() == "inactive"
        wait_for(lambda: pub.get_subscription_count() == 0, 60, "crop subscription withdrawn")
        pub.publish(batch(-3))
        assert prot.set("activate")
        wait_for(lambda: pub.get_subscription_count() == 1, 60, "crop subscription again")
        while not any(m.track_id >= 1000 for m in list(out)):
            pub.publish(batch(1000 + k))
            k += 1
            assert k < 600 and not graph.failed(), graph.failed()
            time.sleep(1.0)
        wait_for(lambda: node_status(diags, "protector_node").get("lifecycle_state") == "active", 30, "diagnostics")
    finally:
        codes = {**graph.stop(), **store_graph.stop()}
        probe.close()
    marks = [m.track_id for m in out]
    assert all(t >= 100 for t in marks), marks                      # nothing sent while not active came out
    first_new = next(i for i, t in enumerate(marks) if t >= 1000)
    assert all(t >= 1000 for t in marks[first_new:]), marks
    assert all(c == 0 for c in codes.values()), codes
