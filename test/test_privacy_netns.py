"""Acceptance of issue 11: the privacy boundary holds between two hosts on one LAN segment.

Two network namespaces joined by a veth pair stand for the robot and an outsider on its network
(real kernel networking, real DDS discovery over multicast). The outsider also gets its own mount
namespace with a private /dev/shm: network namespaces alone share shared memory, and Fast DDS would
then use it (shared/docs/environment.md). Both start from the default ROS environment (what the
Makefile exports for the other tests is removed). The graph starts the way users start it,
``latent-rag run --with-store``; a camera driver under the host-local profile plays >= 30 s of real
vtest frames. Needs root (CI runs as root); elsewhere the test is skipped with the reason printed,
and on CI (CI=true) a missing namespace facility fails instead of skipping.

Shared primitives for the store assertions of part B: the ``robot`` fixture (one graph for the
module) and :func:`outsider` / :func:`outsider_start` (a python snippet in the outsider's namespace
that prints one JSON line last).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from latent_rag_ros.config import load_config
from latent_rag_ros.datasets import Sample
from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
from latent_rag_ros.people import crop_people
from latent_rag_ros.store.build import BuildPlan, build_store

from conftest import VTEST
from rosutil import vtest_frames, write_params

pytestmark = pytest.mark.ros

# What the Makefile / conftest export for the single-host tests: removed, so that both "hosts" run
# with the default ROS environment (multicast discovery on the LAN segment, builtin transports).
_TEST_ONLY_ENV = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS",
                  "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "SKIP_DEFAULT_XML",
                  "FASTDDS_BUILTIN_TRANSPORTS", "LATENT_RAG_EGRESS_KEY_FILE", "ROS_HOME")
CAMERA_SECONDS = 30.0
INJECTED_MODEL = "outsider-injected"
PARAMS = {
    "models": {"generator": "random", "latent_encoder": "random"},
    "protector": {"m": 2, "steps": 1, "batch_size": 2, "device": "cpu"},
    "detector": {"max_crops": 1},
    # the camera driver below publishes where the packaged config points the detector
    "ros": {"service_timeout_s": 10.0, "status_period_s": 0.5, "camera_topic": "/camera/image_raw"},
}


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _netns_unavailable() -> str:
    """Why two network namespaces + a private /dev/shm cannot be made here, or ""."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (iproute2 / util-linux)"
    name = f"lrr_probe{os.getpid()}"
    made = _run("ip", "netns", "add", name)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        shm = _run("ip", "netns", "exec", name, "unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm")
        if shm.returncode != 0:
            return f"no private /dev/shm in a mount namespace: {shm.stderr.strip()}"
    finally:
        _run("ip", "netns", "delete", name)
    return ""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TEST_ONLY_ENV}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


@dataclass
class Lan:
    """Two namespaces on one veth segment: the robot's and the outsider's."""

    robot_ns: str
    outsider_ns: str
    domain: str


@pytest.fixture(scope="module")
def lan():
    reason = _netns_unavailable()
    if reason:
        print(f"\ntest_privacy_netns: {reason}", file=sys.stderr)
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the cross-host privacy test: {reason}")
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    robot_ns, outsider_ns, va, vb = f"lrr_robot{tag}", f"lrr_out{tag}", f"lrra{tag}", f"lrrb{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    steps = [
        ("ip", "netns", "add", robot_ns), ("ip", "netns", "add", outsider_ns),
        ("ip", "link", "add", va, "type", "veth", "peer", "name", vb),
        ("ip", "link", "set", va, "netns", robot_ns), ("ip", "link", "set", vb, "netns", outsider_ns),
        ("ip", "-n", robot_ns, "addr", "add", f"{subnet}.1/24", "dev", va),
        ("ip", "-n", outsider_ns, "addr", "add", f"{subnet}.2/24", "dev", vb),
    ]
    for ns, dev in ((robot_ns, va), (outsider_ns, vb)):
        steps += [("ip", "-n", ns, "link", "set", "lo", "up"), ("ip", "-n", ns, "link", "set", dev, "up"),
                  ("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)]
    try:
        for step in steps:
            done = _run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr.strip()}"
        # a domain of this run only: the robot namespace shares /dev/shm with the host's other tests
        yield Lan(robot_ns, outsider_ns, str(150 + os.getpid() % 80))
    finally:
        for ns in (robot_ns, outsider_ns):
            _run("ip", "netns", "delete", ns)   # deletes the veth pair with it


def outsider_start(lan: Lan, snippet: str, stop_file: Path | None = None) -> subprocess.Popen:
    """Start ``snippet`` (python) on the outsider's host: its own netns, mount ns and /dev/shm."""
    code = "STOP_FILE = %r\n" % (str(stop_file) if stop_file else "") + textwrap.dedent(snippet)
    py = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    return subprocess.Popen(["ip", "netns", "exec", lan.outsider_ns, "unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs tmpfs /dev/shm && exec {py}"],
                            env=_clean_env(ROS_DOMAIN_ID=lan.domain), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outsider_result(proc: subprocess.Popen, timeout: float) -> dict:
    """The JSON object the outsider snippet printed last (fails the test with its stderr otherwise)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"outsider failed (rc {proc.returncode}):\n{err[-3000:]}"
    return json.loads(lines[-1])


def outsider(lan: Lan, snippet: str, timeout: float = 60.0) -> dict:
    """Run ``snippet`` on the outsider's host to completion and return its JSON result."""
    return outsider_result(outsider_start(lan, snippet), timeout)


@dataclass
class Robot:
    """The running graph in the robot namespace."""

    lan: Lan
    proc: subprocess.Popen
    ros_home: Path
    cfg_file: Path
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


def _build_store(cfg_file: Path) -> None:
    cfg = load_config(cfg_file)
    models = build_models(cfg, "cpu", with_encoder=True)
    detector = build_detector(cfg)
    samples = []
    for i, frame in zip(range(0, 200, 10), vtest_frames(list(range(0, 200, 10)))):
        for j, p in enumerate(crop_people(detector, frame, cfg.detector)):
            samples.append(Sample(image=p.crop, name=f"vtest#f{i}_b{j}", frame=i))
    assert len(samples) >= 6, "HOG found too few people in vtest.avi to build a store"
    with torch.no_grad():
        build_store(BuildPlan(samples, cfg.store.path, models.reid, models.latent_encoder, batch_size=8,
                              built_with=model_fingerprint(models), progress=False))


@pytest.fixture(scope="module")
def robot(lan: Lan, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("netns")
    cfg_file = write_params(tmp / "params.yaml", {**PARAMS, "store": {"path": str(tmp / "store")}})
    _build_store(cfg_file)
    ros_home = tmp / "ros_home"   # link keys land in $ROS_HOME/latent_rag_keys, as on a robot
    log = tmp / "graph.log"
    latent_rag = str(Path(sys.executable).with_name("latent-rag"))
    with open(log, "w") as fh:
        proc = subprocess.Popen(["ip", "netns", "exec", lan.robot_ns, latent_rag, "run", "--config", str(cfg_file),
                                 "--with-store"], env=_clean_env(ROS_DOMAIN_ID=lan.domain, ROS_HOME=str(ros_home)),
                                stdout=fh, stderr=subprocess.STDOUT)
    robot = Robot(lan, proc, ros_home, cfg_file, log)
    try:
        yield robot
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# The camera driver on the robot, started the way the README tells users: host-local profile.
CAMERA = """
import json, os, sys, time
from latent_rag_ros.zones import INTERNAL, apply_zone
apply_zone(INTERNAL)
import cv2, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from latent_rag_ros.nodes.common import bgr_to_image
rclpy.init()
node = rclpy.create_node("camera_driver")
pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
end = time.monotonic() + 240
# wait for the detector and for the protector (it subscribes to the crops once its models are loaded)
while time.monotonic() < end and not (pub.get_subscription_count() and node.count_subscribers("/latent_rag/crops")
                                      and node.count_publishers("/reid/protected")):
    rclpy.spin_once(node, timeout_sec=0.1)
ready = time.monotonic() < end
cap = cv2.VideoCapture(VTEST)
cap.set(cv2.CAP_PROP_POS_FRAMES, 300)
sent, t0 = 0, time.monotonic()
# >= SECONDS of frames, then on until the outsider got a protected crop (the CPU-bound protector
# may take a while per frame), at most MAX_SECONDS
while ready and time.monotonic() - t0 < MAX_SECONDS and (time.monotonic() - t0 < SECONDS
                                                          or not os.path.exists(GOT_FILE)):
    ok, frame = cap.read()
    if not ok:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 300)
        continue
    pub.publish(bgr_to_image(frame))
    sent += 1
    for _ in range(5):
        cap.grab()          # 10 fps video played at 2 Hz: every fifth frame
    rclpy.spin_once(node, timeout_sec=0.5)
print(json.dumps({"ready": ready, "frames": sent, "seconds": time.monotonic() - t0}))
"""

# The outsider: listens on everything it can discover, and injects forged ProtectedCrops.
LISTENER = """
import importlib, json, os, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from latent_rag_ros.msg import ProtectedCrop
INTERNAL_TOPICS = ["/camera/image_raw", "/latent_rag/crops", "/latent_rag/protected"]
INTERNAL_NODES = {"detector_node", "protector_node", "camera_driver"}
rclpy.init()
node = rclpy.create_node("outsider_listener")
counts, genuine, injected_out, nodes_seen, texts = {}, 0, 0, set(), []
subs = {}

def on(topic):
    def cb(msg):
        global genuine, injected_out
        counts[topic] = counts.get(topic, 0) + 1
        if topic == "/reid/protected":
            if msg.embedding_model == INJECTED:
                injected_out += 1
            else:
                genuine += 1
                first[0] = first[0] or round(time.monotonic() - t_start, 1)
                fields["tag"] = max(fields["tag"], len(msg.tag))
                fields["label"] = fields["label"] or msg.label
                fields["stage_names"] = max(fields["stage_names"], len(msg.stage_names))
        elif topic == "/latent_rag/protected" and msg.embedding_model == INJECTED:
            counts[topic] -= 1   # our own injection, heard by our own participant
        elif topic == "/rosout":
            nodes_seen.add(msg.name.split(".")[-1]); texts.append(msg.msg)
        elif topic == "/diagnostics":
            for st in msg.status:
                nodes_seen.add(st.name.split(": ")[-1])
                texts.extend(f"{kv.key}={kv.value}" for kv in st.values)
                texts.append(st.message)
                if st.name.endswith("egress_node"):
                    egress.update({kv.key: kv.value for kv in st.values})
        elif topic == "/parameter_events":
            nodes_seen.add(msg.node.split("/")[-1])
            for p in list(msg.new_parameters) + list(msg.changed_parameters):
                v = p.value
                longest[0] = max(longest[0], len(v.byte_array_value), len(v.double_array_value),
                                 len(v.integer_array_value), len(v.string_array_value))
                texts.append(f"{p.name}={v.string_value}")
    return cb

def subscribe(topic, type_name):
    if topic in subs:
        return
    pkg, _, name = type_name.split("/")
    cls = getattr(importlib.import_module(pkg + ".msg"), name)
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
    if topic == "/reid/protected":
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    subs[topic] = node.create_subscription(cls, topic, on(topic), qos)

fields = {"tag": 0, "label": "", "stage_names": 0}
egress = {}
longest = [0]
first, t_start = [0.0], time.monotonic()
PC = "latent_rag_ros/msg/ProtectedCrop"
for t, ty in [("/camera/image_raw", "sensor_msgs/msg/Image"), ("/latent_rag/crops", "latent_rag_ros/msg/PersonCrops"),
              ("/latent_rag/protected", PC), ("/reid/protected", PC),
              ("/rosout", "rcl_interfaces/msg/Log"), ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
              ("/parameter_events", "rcl_interfaces/msg/ParameterEvent")]:
    subscribe(t, ty)
inject = node.create_publisher(ProtectedCrop, "/latent_rag/protected",
                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
forged = ProtectedCrop(embedding_model=INJECTED, m=10, steps=10, track_id=7, label="forged")
forged.image.height, forged.image.width, forged.image.encoding, forged.image.step = 8, 4, "rgb8", 12
forged.image.data = bytes(range(96))
forged.embedding = [1.0] + [0.0] * 1279
forged.tag = list(os.urandom(32))
injected_sent, end = 0, time.monotonic() + 400
topics_seen = set()
last = 0.0
while time.monotonic() < end and not os.path.exists(STOP_FILE):
    rclpy.spin_once(node, timeout_sec=0.05)
    now = time.monotonic()
    if now - last > 0.5:
        last = now
        for t, types in node.get_topic_names_and_types():
            topics_seen.add(t)
            try:
                subscribe(t, types[0])
            except Exception:
                pass
        nodes_seen.update(node.get_node_names())
        if genuine and not os.path.exists(GOT_FILE):
            open(GOT_FILE, "w").close()       # tells the camera it may stop after its 30 s
        if inject.get_subscription_count():   # egress listens on the network: try to slip one in
            inject.publish(forged)
            injected_sent += 1
for _ in range(40):   # drain
    rclpy.spin_once(node, timeout_sec=0.05)
internal = {t: counts.get(t, 0) for t in INTERNAL_TOPICS}
# the lifecycle state changes of the network-zone nodes (egress, store) are public like their
# /diagnostics (state ids only); the robot-internal nodes' transition events must not be heard
NETWORK_LIFECYCLE = {f"/latent_rag/{n}/transition_event" for n in ("egress_node", "store_node")}
other_internal = {t: n for t, n in counts.items() if t not in INTERNAL_TOPICS and t.startswith("/latent_rag/")
                  and t != "/latent_rag/protected" and t not in NETWORK_LIFECYCLE}
print(json.dumps({"counts": counts, "internal": internal, "other_internal": other_internal, "genuine": genuine,
                  "injected_sent": injected_sent, "injected_out": injected_out, "fields": fields,
                  "nodes_seen": sorted(nodes_seen), "topics_seen": sorted(topics_seen),
                  "internal_nodes_seen": sorted(nodes_seen & INTERNAL_NODES), "egress_status": egress,
                  "longest_parameter_array": longest[0], "first_genuine_s": first[0], "texts": texts[-400:]}))
"""


def test_outsider_gets_protected_crops_only(robot: Robot, tmp_path: Path) -> None:
    """>= 1 ProtectedCrop reaches the outsider; nothing internal does; its forged crops never egress."""
    stop, got = tmp_path / "stop", tmp_path / "got_protected"
    listener = outsider_start(robot.lan, f"INJECTED = {INJECTED_MODEL!r}\nGOT_FILE = {str(got)!r}\n" + LISTENER, stop)
    camera_code = (f"VTEST = {VTEST!r}\nSECONDS = {CAMERA_SECONDS}\nMAX_SECONDS = {CAMERA_SECONDS + 120}\n"
                   f"GOT_FILE = {str(got)!r}\n" + CAMERA)
    camera = subprocess.Popen(["ip", "netns", "exec", robot.lan.robot_ns, sys.executable, "-c", camera_code],
                              env=_clean_env(ROS_DOMAIN_ID=robot.lan.domain), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        cam_out, cam_err = camera.communicate(timeout=400)
        time.sleep(3.0)  # let the injections of the last seconds reach egress's counters
    finally:
        stop.touch()
        if camera.poll() is None:
            camera.kill()
    seen = outsider_result(listener, 60)
    cam = json.loads(cam_out.strip().splitlines()[-1]) if cam_out.strip() else {}
    graph_log = robot.log.read_text()[-3000:]
    summary = {k: seen[k] for k in ("counts", "genuine", "first_genuine_s", "injected_sent", "injected_out",
                                    "internal_nodes_seen")}
    print(f"\ncamera: {cam}\noutsider: {json.dumps(summary)}\negress: {seen['egress_status']}")
    assert cam.get("ready"), f"graph never became ready: {cam_err[-2000:]}\n{graph_log}"
    assert cam["seconds"] >= CAMERA_SECONDS and cam["frames"] >= 30, cam
    assert robot.alive(), f"the graph died:\n{graph_log}"
    # the remote re-ID service gets protected crops, stripped of the tag and the evaluation fields
    assert seen["genuine"] >= 1, f"no ProtectedCrop reached the outsider: {seen['counts']}\n{graph_log}"
    assert seen["fields"] == {"tag": 0, "label": "", "stage_names": 0}, seen["fields"]
    # nothing robot-internal: no raw frame, no raw crop, no protector output before egress, no
    # /rosout, /diagnostics or parameter events of an internal node, not even their names
    assert seen["internal"] == {"/camera/image_raw": 0, "/latent_rag/crops": 0, "/latent_rag/protected": 0}, seen
    assert seen["other_internal"] == {}, seen["other_internal"]
    assert seen["internal_nodes_seen"] == [], seen["nodes_seen"]
    # forged crops were offered to egress (it listens on the network) and never forwarded
    assert seen["injected_sent"] >= 1, "the outsider never matched egress's subscription"
    assert seen["injected_out"] == 0
    assert int(seen["egress_status"].get("dropped_bad_tag", "0")) >= 1, seen["egress_status"]
    # what the network-facing nodes say about themselves carries no identity data: no vectors in
    # parameter events, no labels or store entry names in /rosout, /diagnostics or parameter values
    assert seen["longest_parameter_array"] <= 16, seen["longest_parameter_array"]
    for text in seen["texts"]:
        assert "forged" not in text and "vtest#" not in text, text
        assert len(text) < 400, f"suspiciously long status/log text: {text[:200]}..."


# ---------------------------------------------------------------- the trusted store link (part B)
# An outsider on the LAN: anonymous and forged calls to the store, with the service types it would
# get from this package's public interface definitions. Then a real remote robot (and admin) on the
# same outsider host, holding copies of provisioned keys. Prints one JSON line.
STORE_PROBE = """
import json, os, time
import numpy as np
import rclpy
from latent_rag_ros.nodes import link
from latent_rag_ros.security import ClientSealer, Key, load_key
from latent_rag_ros.srv import AddIdentities, RetrieveLatents

def bare(res):
    return {"ok": bool(res.ok), "sealed": len(res.sealed), "nonce": len(res.nonce), "message": res.message}

rclpy.init()
node = rclpy.create_node("outsider_store_probe")
ret = node.create_client(RetrieveLatents, "/latent_rag/retrieve_latents")
add = node.create_client(AddIdentities, "/latent_rag/add_identities")
out = {"ready": bool(ret.wait_for_service(timeout_sec=120) and add.wait_for_service(timeout_sec=30))}

def call(client, req):
    fut = client.call_async(req)
    rclpy.spin_until_future_complete(node, fut, timeout_sec=30)
    return fut.result()

def opened(client, sealer, op, env):
    return link.open_reply(sealer, op, env, call(client, link.to_request(op, env)))

rng = np.random.default_rng(0)
q = {"identity": rng.normal(size=DIM).astype(np.float32)}
rows = {"identities": rng.normal(size=(1, DIM)).astype(np.float32),
        "latents": np.zeros((1, NUM_WS, W_DIM), np.float32)}
robot = ClientSealer(load_key(ROBOT_KEY))
admin = ClientSealer(load_key(ADMIN_KEY))
forger = ClientSealer(Key("robot", "robot", os.urandom(32)))    # knows the id, guesses the secret
if out["ready"]:
    out["anon_retrieve"] = bare(call(ret, RetrieveLatents.Request(protocol=2)))
    out["forged_retrieve"] = bare(call(ret, link.to_request("retrieve", forger.seal("retrieve", {"m": 3}, q))))
    first = opened(add, admin, "add", admin.seal("add", {"count": 1, "labels": ["remote-admin-1"]}, rows))
    out["admin_add_1"] = {"ok": first.ok, "size": first.meta.get("size"), "message": first.message}
    out["anon_add"] = bare(call(add, AddIdentities.Request(protocol=2, key_id="admin")))
    forged_admin = ClientSealer(Key("admin", "admin", os.urandom(32)))
    out["forged_add"] = bare(call(add, link.to_request("add", forged_admin.seal("add", {"count": 1}, rows))))
    out["robot_key_add"] = bare(call(add, link.to_request("add", robot.seal("add", {"count": 1}, rows))))
    second = opened(add, admin, "add", admin.seal("add", {"count": 1, "labels": ["remote-admin-2"]}, rows))
    out["admin_add_2"] = {"ok": second.ok, "size": second.meta.get("size"), "message": second.message}
    env = robot.seal("retrieve", {"m": 3, "exclude_id": -1}, q)
    captured = link.to_request("retrieve", env)          # what an eavesdropper on the LAN records
    got = link.open_reply(robot, "retrieve", env, call(ret, captured))
    out["robot_retrieve"] = {"ok": got.ok, "message": got.message,
                             "shape": list(got.arrays["latents"].shape) if got.ok else []}
    out["replayed"] = bare(call(ret, captured))
print(json.dumps(out))
"""


def test_store_serves_only_keyed_robots_across_hosts(robot: Robot, tmp_path: Path) -> None:
    """Outsider: anonymous/forged retrieve and add refused bare; remote robot key gets latents; replay refused."""
    from latent_rag_ros.store import open_store

    from rosutil import wait_for

    keys = robot.ros_home / "latent_rag_keys"
    wait_for(lambda: (keys / "robot.key").is_file() and (keys / "admin.key").is_file(), 120,
             "`latent-rag run --with-store` to provision the local robot + admin keys")
    remote = tmp_path / "remote_keys"          # the keys provisioned to a remote robot and admin
    remote.mkdir(mode=0o700)
    for name in ("robot.key", "admin.key"):
        shutil.copy(keys / name, remote / name)
        os.chmod(remote / name, 0o600)
    with open_store(load_config(robot.cfg_file).store.path, read_only=True) as store:
        dims = {"DIM": store.dim, "NUM_WS": store.num_ws, "W_DIM": store.w_dim}
    consts = "".join(f"{k} = {v!r}\n" for k, v in dims.items())
    consts += f"ROBOT_KEY = {str(remote / 'robot.key')!r}\nADMIN_KEY = {str(remote / 'admin.key')!r}\n"
    got = outsider(robot.lan, consts + STORE_PROBE, timeout=240)
    graph_log = robot.log.read_text()[-3000:]
    assert got["ready"], f"the outsider never discovered the store services:\n{graph_log}"
    refused = {"ok": False, "sealed": 0, "nonce": 0}
    for case in ("anon_retrieve", "forged_retrieve", "anon_add", "forged_add", "robot_key_add", "replayed"):
        res = dict(got[case])
        message = res.pop("message")
        assert res == refused, (case, got[case])                          # ok=false and nothing else
        assert message.startswith(("not authenticated", "not authorized")), (case, message)
    # adds without the admin key left the store size unchanged (two admin adds bracket them)
    assert got["admin_add_1"]["ok"] and got["admin_add_2"]["ok"], got
    assert got["admin_add_2"]["size"] == got["admin_add_1"]["size"] + 1, got
    # a real remote robot holding a valid key is served
    assert got["robot_retrieve"]["ok"], got["robot_retrieve"]
    assert got["robot_retrieve"]["shape"] == [3, dims["NUM_WS"], dims["W_DIM"]]
    assert robot.alive(), graph_log
