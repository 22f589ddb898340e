"""Faults: nodes killed (SIGKILL) and respawned during a live camera stream, a corrupted model at start-up.

Everything is real: node processes over DDS on a private domain, the real DeepSORT re-ID weights,
a real FAISS store built from vtest.avi people, random-weight StyleGAN3/E4E (no pretrained ones
exist offline). The respawn policy under test is ``latent-rag run``'s (``nodes.graph``); the launch
files declare the same policy for ``ros2 launch``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import RegionOfInterest

from latent_rag_ros.config import load_config, ros_name
from latent_rag_ros.datasets import Sample
from latent_rag_ros.eval.bags import BagRecorder, read_protected
from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
from latent_rag_ros.msg import PersonCrop, PersonCrops, ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.egress_node import egress_problem
from latent_rag_ros.nodes.graph import Graph, Respawn, provision_local_keys
from latent_rag_ros.people import crop_people
from latent_rag_ros.store.build import BuildPlan, build_store

from procutil import own_fastdds_segments, running
from rosutil import Probe, node_status, vtest_frames, wait_for, write_params

ROOT = Path(__file__).resolve().parent.parent


def test_backoff_doubles_and_stops_after_max_retries() -> None:
    """The restart schedule on an injected clock: delay, 2x delay, ... capped; then dead for good."""
    class Dead:
        pid = 1

        def poll(self) -> int:
            return -9

    g = Graph(respawn=Respawn(max_retries=2, delay=1.0, max_delay=1.5))
    g._launch["n"] = ([], {}, None)
    g.restarts["n"] = 0
    g.procs["n"] = Dead()
    spawned: list[float] = []
    g._spawn = lambda name: (spawned.append(t), g.procs.__setitem__(name, Dead()))  # type: ignore[method-assign]
    t = 0.0
    lines, gone = g.supervise(t)
    assert "restarting in 1.0 s (1/2)" in lines[0] and not gone and not spawned
    t = 0.9
    assert g.supervise(t) == ([], {}) and not spawned        # not yet due
    t = 1.0
    g.supervise(t)
    assert spawned == [1.0] and g.restarts["n"] == 1
    t = 1.1
    lines, _ = g.supervise(t)
    assert "restarting in 1.5 s (2/2)" in lines[0]           # 2.0 s capped at max_delay
    t = 2.6
    g.supervise(t)
    assert spawned == [1.0, 2.6]
    assert g.supervise(3.0)[1] == {"n": -9}                    # max_retries spent: dead for good


class Supervisor:
    """What ``latent-rag run`` does in its main loop: graph.supervise() every 0.2 s (here in a thread)."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.lines, self._stop = graph, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            lines, gone = self.graph.supervise()
            self.lines += lines + [f"gone {gone}"] * bool(gone)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


@pytest.fixture(scope="module")
def fault_setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("faults")
    params = {"models": {"generator": "random", "latent_encoder": "random"},
              "protector": {"m": 2, "steps": 1, "batch_size": 4, "device": "cpu"},
              "detector": {"max_crops": 2},
              "store": {"path": str(tmp / "store")}, "link": {"keys_dir": str(tmp / "keys")},
              "ros": {"service_timeout_s": 3.0, "status_period_s": 0.3}}
    cfg_file = write_params(tmp / "params.yaml", params)
    provision_local_keys(str(cfg_file))   # the local store's robot + admin link keys
    cfg = load_config(cfg_file)
    models = build_models(cfg, "cpu", with_encoder=True)
    detector = build_detector(cfg)
    samples = []
    for i, frame in zip(range(0, 120, 10), vtest_frames(list(range(0, 120, 10)))):
        for j, p in enumerate(crop_people(detector, frame, cfg.detector)):
            samples.append(Sample(image=p.crop, name=f"vtest#f{i}_b{j}", frame=i))
    with torch.no_grad():
        build_store(BuildPlan(samples, cfg.store.path, models.reid, models.latent_encoder, batch_size=8,
                              built_with=model_fingerprint(models), progress=False))
    # the camera side of the stream: real person crops of later frames, as the detector publishes them
    crops = []
    for frame in vtest_frames([420, 460, 500]):
        msg = PersonCrops()
        for p in crop_people(detector, frame, cfg.detector):
            x0, y0, x1, y1 = p.box
            msg.crops.append(PersonCrop(image=bgr_to_image(p.crop), box=RegionOfInterest(
                x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0), score=p.score, track_id=-1))
        if msg.crops:
            crops.append(msg)
    assert crops, "HOG found nobody in frames 420-500"
    return cfg_file, cfg, crops


@pytest.mark.ros
@pytest.mark.slow
def test_kill_store_protector_egress_during_a_stream(fault_setup, tmp_path: Path) -> None:
    """SIGKILL store, protector, egress one at a time while frames stream in; each comes back by itself,
    the protector's status shows the store outage and the recovery, crops lost in the outage are
    counted, and /reid/protected carries only complete ProtectedCrops throughout."""
    cfg_file, cfg, crop_msgs = fault_setup
    graph = Graph(respawn=Respawn(max_retries=3, delay=0.5))
    probe = Probe("fault_probe")
    sup = None
    streaming = threading.Event()
    try:
        # the detector is left out (its respawn is the same code path): crops are streamed directly
        graph.start(["store_node", "protector_node", "egress_node"], str(cfg_file))
        sup = Supervisor(graph)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        out = probe.collect(ProtectedCrop, cfg.ros.egress_topic, QoSProfile(depth=100,
                                                                            reliability=ReliabilityPolicy.RELIABLE))
        # the recording a remote side would make: the raw CDR bytes of /reid/protected into a bag
        recorded: list[tuple[int, bytes]] = []
        probe.node.create_subscription(ProtectedCrop, cfg.ros.egress_topic,
                                       lambda raw: recorded.append((time.time_ns(), bytes(raw))),
                                       QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        cam = probe.node.create_publisher(PersonCrops, ros_name(cfg.ros.crops_topic), QoSProfile(depth=10))
        streaming.set()

        def stream() -> None:
            k = 0
            while streaming.is_set():
                cam.publish(crop_msgs[k % len(crop_msgs)])
                k += 1
                time.sleep(0.5)

        threading.Thread(target=stream, daemon=True).start()
        wait_for(lambda: len(out) >= 2, 240, "first protected crops")

        # 1. the trusted store dies: nothing is published, the loss is counted, then it comes back.
        # The store stays down for 20 s (a longer respawn delay for this kill only): with the 0.5 s delay it
        # could be back before the busy protector next asked it (CI once saw exactly that).
        graph.respawn = Respawn(max_retries=3, delay=20.0)
        os.kill(graph.procs["store_node"].pid, signal.SIGKILL)
        wait_for(lambda: int(node_status(diags, "protector_node").get("store_outages", 0)) >= 1, 120,
                 "protector reporting the store outage")
        wait_for(lambda: int(node_status(diags, "protector_node").get("crops_dropped_store", 0)) > 0, 120,
                 "crops lost in the outage counted")
        wait_for(lambda: node_status(diags, "store_node").get("restarts") == "1", 120, "store_node respawned")
        graph.respawn = Respawn(max_retries=3, delay=0.5)
        n = len(out)
        wait_for(lambda: len(out) > n and node_status(diags, "protector_node").get("store_reachable") == "True", 180,
                 "protection resumed after the store came back")

        # 2. the protector dies: the respawned one loads its models and protects again
        os.kill(graph.procs["protector_node"].pid, signal.SIGKILL)
        wait_for(lambda: node_status(diags, "protector_node").get("restarts") == "1", 120, "protector respawned")
        n = len(out)
        wait_for(lambda: len(out) > n, 240, "protection resumed after the protector came back")

        # 3. egress dies: /reid/protected resumes from the respawned egress
        os.kill(graph.procs["egress_node"].pid, signal.SIGKILL)
        wait_for(lambda: node_status(diags, "egress_node").get("restarts") == "1", 120, "egress respawned")
        n = len(out)
        wait_for(lambda: len(out) > n, 240, "egress forwarding again")
        streaming.clear()
        assert graph.restarts == {"store_node": 1, "protector_node": 1, "egress_node": 1}
        assert not any(line.startswith("gone") for line in sup.lines), sup.lines
    finally:
        streaming.clear()
        if sup is not None:
            sup.stop()
        graph.stop()
        probe.close()
    for msg in out:   # only complete ProtectedCrops ever left the robot
        assert egress_problem(msg) == "" and msg.m == 2 and msg.steps == 1 and msg.store_version
        assert msg.image.encoding == "rgb8" and len(msg.image.data) == msg.image.height * msg.image.step
    bag = tmp_path / "egress_recording"
    with BagRecorder(bag) as rec:
        conn = rec.add_topic(cfg.ros.egress_topic, "latent_rag_ros/msg/ProtectedCrop")
        for t, raw in recorded:
            rec.write(conn, t, raw)
    back = read_protected(bag, cfg.ros.egress_topic)   # every record decodes to a whole protected crop
    assert len(back) == len(recorded) >= 3
    for rec_msg in back:
        h, w = rec_msg["image"].shape[:2]
        assert (w, h) == rec_msg["box"][2:] and rec_msg["m"] == 2 and np.isfinite(rec_msg["embedding"]).all()


def test_corrupted_model_file_gives_one_error_and_a_nonzero_exit(tmp_path: Path) -> None:
    """A truncated generator file at start-up: one clear line naming the file, exit != 0, never half-loaded."""
    good = build_models(load_config(None, {"models.generator": "random", "models.latent_encoder": "random"}),
                        "cpu", with_encoder=False)
    from latent_rag_ros.models.generator_io import save_generator

    save_generator(good.generator, tmp_path / "gen")
    weights = next(tmp_path.glob("gen*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])      # a half-written copy
    cfg = write_params(tmp_path / "p.yaml", {"models": {"generator": str(weights), "latent_encoder": "random"},
                                             "protector": {"device": "cpu"}})
    proc = subprocess.run([sys.executable, "-m", "latent_rag_ros.nodes.protector_node", "--ros-args",
                           "-p", f"config_file:={cfg}"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "RCUTILS_LOGGING_BUFFERED_STREAM": "0"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    fatal = [line for line in text.splitlines() if "fatal" in line.lower()]
    assert len(fatal) == 1 and weights.name in fatal[0], text
    assert "protecting" not in text       # never got as far as subscribing to crops


def _children(pid: int) -> list[int]:
    """The node processes among ``pid``'s children (the runner also starts `fastdds shm clean` after a kill)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(x) for x in f.read().split()]
    nodes = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                if b"\x00-m\x00latent_rag_ros.nodes." in f.read():   # exec'd as a node, not a fork of the runner
                    nodes.append(kid)
        except OSError:
            continue
    return nodes


@pytest.mark.ros
def test_latent_rag_run_respawns_a_killed_node_then_gives_up(tmp_path: Path) -> None:
    """`latent-rag run`'s loop (run_graph) with only egress_node, so no models load: SIGKILL it, it comes
    back; kill it past respawn_max_retries and the graph stops with exit code 1."""
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"status_period_s": 0.3}})
    code = ("import sys, latent_rag_ros.nodes.graph as g; g.graph_nodes = lambda *_: ('egress_node',); "
            "raise SystemExit(g.run_graph(sys.argv[1], False, None, g.Respawn(max_retries=2, delay=0.2)))")
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        runner = subprocess.Popen([sys.executable, "-c", code, str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(_children(runner.pid)) == 1, 60, "egress_node started")
        for restart in (1, 2):
            victim = _children(runner.pid)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=victim: any(k != v for k in _children(runner.pid)), 60,
                     f"egress_node restarted ({restart})")
            assert f"restart {restart})" in log.read_text()
        os.kill(_children(runner.pid)[0], signal.SIGKILL)   # a third death: past max_retries=2
        assert runner.wait(60) == 1
        text = log.read_text()
        assert "restarting in 0.2 s (1/2)" in text and "restarting in 0.4 s (2/2)" in text
        assert "after 2 restarts; stopping the graph" in text
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def _wait_for_diagnostics(what: str) -> None:
    """Block until a node publishes on /diagnostics (it is configured and spinning)."""
    probe = Probe("diag_probe")
    try:
        beats = probe.collect(DiagnosticArray, "/diagnostics")
        wait_for(lambda: len(beats) > 0, 120, f"{what}'s /diagnostics")
    finally:
        probe.close()


def test_graph_nodes_stop_when_the_process_that_started_them_is_killed(tmp_path: Path) -> None:
    """`latent-rag run` or the demo killed by SIGKILL (out of memory, a timeout) cannot stop its nodes.

    They must stop on their own: an orphaned graph stayed on its ROS domain and took, and published, what
    the next graph on that domain sent (a CI run lost three DDS tests to orphans of a killed demo).
    """
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"heartbeat_period_s": 0.2}})
    code = ("import sys, time\n"
            "from latent_rag_ros.nodes.graph import Graph\n"
            "g = Graph()\n"
            "g.start(['egress_node'], sys.argv[1], log_dir=sys.argv[2])\n"
            "print(g.procs['egress_node'].pid, flush=True)\n"
            "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code, str(cfg), str(tmp_path / "logs")], stdout=subprocess.PIPE,
                             text=True)
    node_pid = 0
    try:
        node_pid = int(owner.stdout.readline())
        _wait_for_diagnostics("the egress node")   # it is up
        owner.kill()
        owner.wait()
        wait_for(lambda: not running(node_pid), 60, "the orphaned egress node to stop")
        log = (tmp_path / "logs" / "egress_node.log").read_text()
        assert f"(pid {owner.pid}) is gone: stopping" in log
        assert "Traceback" not in log   # the clean stop, not a crash
    finally:
        owner.kill()
        if node_pid and running(node_pid):
            os.kill(node_pid, signal.SIGKILL)


def test_a_stopped_node_leaves_no_shared_memory_behind(tmp_path: Path) -> None:
    """Fast DDS's /dev/shm segments (RAM) of a node are gone after a clean stop.

    Before, the ``os._exit`` that ends every node skipped the participant's destruction: each stop left
    its segment and port files, and a day of test runs had filled 20 GB of /dev/shm.
    """
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"heartbeat_period_s": 0.2}})
    graph = Graph()
    graph.start(["egress_node"], str(cfg), log_dir=str(tmp_path / "logs"))
    try:
        pid = graph.procs["egress_node"].pid
        _wait_for_diagnostics("the egress node")   # up and running
        segments = own_fastdds_segments(pid)   # 16 MB each with the shipped profiles
    finally:
        codes = graph.stop(timeout=30.0)
    assert codes == {"egress_node": 0}
    # (its port files, 52 KB, are also opened by every peer that sent to it and may stay until those
    # close them; `fastdds shm clean` removes them once nobody holds them)
    left = [f for f in segments if os.path.exists(f)]
    assert segments and left == [], f"a clean stop left its Fast DDS segments in /dev/shm: {left}"


def test_the_segment_of_a_killed_node_is_cleaned_before_it_restarts(tmp_path: Path) -> None:
    """A node killed by SIGKILL cannot remove its Fast DDS segment (16 MB of RAM in /dev/shm); the runner's
    supervisor runs Fast DDS's `fastdds shm clean` when it sees such a death, so restarts do not pile up."""
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"heartbeat_period_s": 0.2}})
    graph = Graph(respawn=Respawn(max_retries=1, delay=60.0))   # restart far away: only the clean-up is seen
    graph.start(["egress_node"], str(cfg), log_dir=str(tmp_path / "logs"))
    try:
        pid = graph.procs["egress_node"].pid
        _wait_for_diagnostics("the egress node")
        segments = own_fastdds_segments(pid)
        assert segments
        os.kill(pid, signal.SIGKILL)
        graph.procs["egress_node"].wait(30)
        assert all(os.path.exists(f) for f in segments)   # what SIGKILL leaves
        lines, _ = graph.supervise()
        assert any("restarting in" in ln for ln in lines) and not any("failed" in ln for ln in lines), lines
        assert not any(os.path.exists(f) for f in segments), "the killed node's segment is still in /dev/shm"
    finally:
        graph.stop(timeout=30.0)
