"""protect.launch.py and store.launch.py run by the REAL launch.LaunchService, as `ros2 launch` runs them.

Nodes start from the installed launch files, real frames from vtest.avi flow to /reid/protected, the
launch arguments reach the nodes (namespace, camera_topic, config_file, with_store, store_path,
use_sim_time, log_level, autostart), the lifecycle nodes activate themselves (autostart) or wait for
`ros2 lifecycle set` (autostart:=false), a killed node is respawned and activates itself again, and
one SIGINT (Ctrl-C) stops every process cleanly. Skipped where the
vendored launch/launch_ros are missing, except on CI (CI=true), where that fails (launchutil.py).
Models: the real DeepSORT MobileNetV2 re-ID weights, random-weight StyleGAN3/E4E (none exist offline).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.config import load_config
from latent_rag_ros.datasets import Sample
from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes import link
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import provision_local_keys
from latent_rag_ros.people import crop_people
from latent_rag_ros.security import ClientSealer, new_key
from latent_rag_ros.srv import RetrieveLatents
from latent_rag_ros.store.build import BuildPlan, build_store

from launchutil import LaunchRun, require_launch, wait_gone
from rosutil import Probe, call, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
PARAMS = {
    "models": {"generator": "random", "latent_encoder": "random"},
    "protector": {"m": 3, "steps": 2, "batch_size": 4, "device": "cpu"},
    "detector": {"max_crops": 3},
    "ros": {"service_timeout_s": 10.0, "status_period_s": 0.5},
}
NODES = ["store_node", "detector_node", "protector_node", "egress_node"]


@pytest.fixture(scope="module")
def store_setup(tmp_path_factory: pytest.TempPathFactory):
    """A parameter file naming a small real store (people from vtest.avi, random-weight generator)."""
    require_launch()
    tmp = tmp_path_factory.mktemp("launch")
    cfg_file = write_params(tmp / "params.yaml", {**PARAMS, "store": {"path": str(tmp / "store")},
                                                  "link": {"keys_dir": str(tmp / "keys")}})
    provision_local_keys(str(cfg_file))   # the local store's robot + admin link keys
    cfg = load_config(cfg_file)
    models = build_models(cfg, "cpu", with_encoder=True)
    detector = build_detector(cfg)
    idx = list(range(0, 200, 20))
    samples = [Sample(image=p.crop, name=f"vtest#f{i}_b{j}", frame=i) for i, frame in zip(idx, vtest_frames(idx))
               for j, p in enumerate(crop_people(detector, frame, cfg.detector))]
    assert len(samples) >= 4, "HOG found too few people in vtest.avi to build a store"
    with torch.no_grad():
        build_store(BuildPlan(samples, cfg.store.path, models.reid, models.latent_encoder, batch_size=8,
                              built_with=model_fingerprint(models), progress=False))
    return tmp, cfg_file, cfg, models.reid.dim


def _param(probe: Probe, node: str, name: str):
    client = probe.node.create_client(GetParameters, f"{node}/get_parameters")
    v = call(client, GetParameters.Request(names=[name]), f"{node} parameter {name}").values[0]
    return {1: v.bool_value, 2: v.integer_value, 3: v.double_value, 4: v.string_value}.get(v.type)


def _lifecycle(probe: Probe, node: str, transition: int | None = None) -> str | bool:
    """`ros2 lifecycle get <node>` (transition None) or `ros2 lifecycle set <node> <transition>`."""
    if transition is None:
        return call(probe.node.create_client(GetState, f"{node}/get_state"), GetState.Request(),
                    f"{node}/get_state").current_state.label
    else:
        client = probe.node.create_client(ChangeState, f"{node}/change_state")
        req = ChangeState.Request(transition=Transition(id=transition))
    wait_for(client.service_is_ready, 120, f"{node} lifecycle services")
    fut = client.call_async(req)
    wait_for(fut.done, 120, f"{node} lifecycle reply")
    return fut.result().current_state.label if transition is None else fut.result().success


def _becomes(probe: Probe, node: str, state: str, timeout: float) -> None:
    """Ask ``node`` its state again and again until it is ``state``: after a SIGKILL, DDS still lists the
    dead process's get_state service for a while, and a request that went only to it never gets an answer."""
    end = time.monotonic() + timeout
    client = probe.node.create_client(GetState, f"{node}/get_state")
    while time.monotonic() < end:
        if client.service_is_ready():
            fut = client.call_async(GetState.Request())
            stop = time.monotonic() + 5
            while not fut.done() and time.monotonic() < stop:
                time.sleep(0.05)
            if fut.done() and fut.result().current_state.label == state:
                return
            client.remove_pending_request(fut)
        time.sleep(0.5)
    raise AssertionError(f"{node} not {state} after {timeout:.0f} s")


def _assert_clean_stop(run: LaunchRun, expected: list[str]) -> None:
    pids = run.pids()
    assert sorted(pids) == sorted(expected), run.output[-3000:]
    code = run.interrupt()
    assert code == 0, f"launch exit code {code}\n{run.output[-3000:]}"
    assert not wait_gone(list(pids.values()), 10), "node processes left behind"
    for name, pid in pids.items():
        assert f"process has finished cleanly [pid {pid}]" in run.output, f"{name}: {run.output[-3000:]}"
    assert "escalating to 'SIGTERM'" not in run.output and "Traceback" not in run.output


def test_protect_launch_runs_the_graph_and_stops_on_ctrl_c(store_setup) -> None:
    _, cfg_file, _, dim = store_setup
    run = LaunchRun("protect.launch.py", config_file=str(cfg_file), with_store="true", namespace="robot_a",
                    camera_topic="front/image_raw", log_level="debug")
    probe = Probe("launch_probe")
    try:
        out = probe.collect(ProtectedCrop, "/reid/protected")
        cam = probe.node.create_publisher(Image, "/robot_a/front/image_raw",
                                          QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        try:
            wait_for(lambda: cam.get_subscription_count() > 0 and probe.node.count_publishers("/reid/protected") > 0
                     and probe.node.count_subscribers("/robot_a/crops") > 0, 240, "the launched graph")
        except AssertionError as exc:
            lines = [ln for ln in run.lines if "[DEBUG]" not in ln]
            raise AssertionError(f"{exc}\n" + "\n".join(lines[-60:])) from None
        # node names travel on their own discovery topic and may lag the endpoints seen above
        wanted = {(n, "/robot_a") for n in NODES}
        wait_for(lambda: wanted <= set(probe.node.get_node_names_and_namespaces()), 60, f"node names {sorted(wanted)}")
        frames = vtest_frames(list(range(400, 600, 20)))
        deadline, k = time.monotonic() + 240, 0
        while not out and time.monotonic() < deadline and run.proc.poll() is None:
            cam.publish(bgr_to_image(frames[k % len(frames)]))
            k += 1
            time.sleep(1.0)
        assert out, f"no protected crop after {k} frames\n{run.output[-3000:]}"
        assert len(out[0].embedding) == dim and out[0].m == 3 and out[0].steps == 2
        assert np.isfinite(np.asarray(out[0].embedding)).all()
        assert _param(probe, "/robot_a/detector_node", "use_sim_time") is False
        assert _param(probe, "/robot_a/detector_node", "ros.camera_topic") == "front/image_raw"
        assert "[robot_a.detector_node]" in run.output
        # autostart (the default): every lifecycle node configured and activated itself
        for node in ("store_node", "detector_node", "protector_node", "egress_node"):
            assert _lifecycle(probe, f"/robot_a/{node}") == "active", node
        # respawn: a killed egress comes back (launch's respawn policy) and activates itself again
        old = run.pids()["egress_node"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: run.pids()["egress_node"] != old, 120, "egress_node respawned by launch")
        _becomes(probe, "/robot_a/egress_node", "active", 120)
        assert any("[DEBUG]" in line for line in run.lines if line.startswith("[protector_node")), "log_level:=debug"
        _assert_clean_stop(run, NODES)
    finally:
        probe.close()
        run.stop()


def test_store_launch_serves_its_store_and_takes_the_arguments(store_setup) -> None:
    tmp, _, cfg, dim = store_setup
    keys = str(tmp / "keys")
    sealer = ClientSealer(new_key(keys, "launch_probe", "robot"))   # the sealed store link needs a robot key
    bare = write_params(tmp / "bare.yaml", {"ros": {"status_period_s": 0.5}, "link": {"keys_dir": keys}})
    run = LaunchRun("store.launch.py", config_file=str(bare), store_path=cfg.store.path, namespace="trusted",
                    use_sim_time="true", log_level="warn", autostart="false")
    probe = Probe("store_launch_probe")
    try:
        client = probe.node.create_client(RetrieveLatents, "/trusted/retrieve_latents")
        # autostart:=false: the store waits unconfigured, without its services, for a lifecycle manager
        assert _lifecycle(probe, "/trusted/store_node") == "unconfigured"
        assert not client.service_is_ready()
        assert _lifecycle(probe, "/trusted/store_node", Transition.TRANSITION_CONFIGURE)
        assert _lifecycle(probe, "/trusted/store_node", Transition.TRANSITION_ACTIVATE)
        wait_for(client.service_is_ready, 120, "/trusted/retrieve_latents")
        query = np.zeros(dim, np.float32)
        query[0] = 1.0
        reply = link.call(probe.node, client, sealer, "retrieve", {"m": 2, "exclude_id": -1}, {"identity": query},
                     timeout_s=30)
        assert reply.ok, reply.message
        assert reply.arrays["latents"].shape[0] == 2 and reply.meta["store_version"]
        assert _param(probe, "/trusted/store_node", "use_sim_time") is True
        assert _param(probe, "/trusted/store_node", "store.path") == cfg.store.path
        # log_level:=warn hides the node's start-up INFO lines
        assert not [line for line in run.lines if "[INFO]" in line and "trusted.store_node" in line]
        _assert_clean_stop(run, ["store_node"])
    finally:
        probe.close()
        run.stop()
