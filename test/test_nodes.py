"""Single nodes over real DDS: the store service's answers to bad (authenticated) requests, camera QoS handling."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.msg import PersonCrops
from latent_rag_ros.nodes import link
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.security import ClientSealer, new_key
from latent_rag_ros.srv import AddIdentities, RetrieveLatents
from latent_rag_ros.store import open_store
from latent_rag_ros.store.audit import show_audit, verify_audit

from rosutil import Probe, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
DIM, L, C = 8, 4, 6
VECS = np.random.default_rng(0).normal(size=(5, DIM)).astype(np.float32)


BUILT_WITH = {"generator": "/srv/models/g.safetensors#ab12cd34", "reid": "deepsort_mobilenetv2:builtin"}


@pytest.fixture()
def store_node(tmp_path: Path, request):
    """A store_node over a 5-entry store, with a robot and an admin key; yields sealed-call helpers."""
    store = open_store(tmp_path / "store", create=True, dim=DIM, num_ws=L, w_dim=C, built_with=BUILT_WITH)
    store.add(VECS, np.random.default_rng(1).normal(size=(5, L, C)).astype(np.float32), [f"p{i}" for i in range(5)])
    store.close()
    keys = tmp_path / "keys"
    robot, admin = ClientSealer(new_key(keys, "robot", "robot")), ClientSealer(new_key(keys, "admin", "admin"))
    robot_b = ClientSealer(new_key(keys, "robot_b", "robot"))
    extra = getattr(request, "param", {})
    cfg = write_params(tmp_path / "p.yaml", {"store": {"path": str(tmp_path / "store"), "max_m": 4, **extra},
                                             "link": {"keys_dir": str(keys)}})
    graph = Graph()
    graph.start(["store_node"], str(cfg))
    probe = Probe("store_probe")
    retrieve = probe.node.create_client(RetrieveLatents, "/latent_rag/retrieve_latents")
    add = probe.node.create_client(AddIdentities, "/latent_rag/add_identities")
    wait_for(lambda: retrieve.service_is_ready() and add.service_is_ready(), 60, "store services")

    def ask(meta, identity=None, sealer=robot):
        arrays = {"identity": np.asarray(identity, np.float32)} if identity is not None else {}
        return link.call(probe.node, retrieve, sealer, "retrieve", {"exclude_id": -1, **meta}, arrays)

    def put(n, identities, latents, labels):
        return link.call(probe.node, add, admin, "add", {"count": n, "labels": labels},
                         {"identities": np.asarray(identities, np.float32), "latents": np.asarray(latents, np.float32)})

    yield ask, put, robot_b, graph
    codes = graph.stop()
    probe.close()
    assert codes == {"store_node": 0}


def test_store_service_answers_bad_requests_and_keeps_serving(store_node, tmp_path: Path) -> None:
    ask, put, _, graph = store_node
    good = np.ones(DIM, np.float32)
    bad = [
        (dict(m=2), [1.0] * (DIM - 1), "length"),
        (dict(m=2), [math.nan] + [1.0] * (DIM - 1), "NaN"),
        (dict(m=0), good, "m=0"),
        (dict(m=5), good, "m=5"),          # above max_m=4
        # 5 entries: the query's own (an exact duplicate of p1) and label p0 excluded leave 3 < m
        (dict(m=4, exclude_label="p0"), VECS[1], "eligible"),
    ]
    for meta, identity, needle in bad:
        res = ask(meta, identity)
        assert not res.ok and needle in res.message, (meta, res.message)
    res = ask(dict(m=3), good)
    assert res.ok, res.message
    lat, ids, scores = res.arrays["latents"], res.arrays["ids"], res.arrays["scores"]
    assert lat.shape == (3, L, C) and len(ids) == 3
    assert list(scores) == sorted(scores, reverse=True)
    # excluding an id removes it
    res2 = ask(dict(m=3, exclude_id=int(ids[0])), good)
    assert res2.ok and ids[0] not in list(res2.arrays["ids"])
    # incremental add (admin key), then the new entry is served
    v = np.zeros(DIM, np.float32)
    v[0] = 1.0
    bad_add = put(1, v, [0.0] * 3, ["x"])
    assert not bad_add.ok and "latents" in bad_add.message
    ok_add = put(1, v, [7.0] * (L * C), ["new"])
    assert ok_add.ok and ok_add.meta["size"] == 6 and ok_add.meta["store_version"] != res.meta["store_version"]
    near = v.copy()
    near[1] = 0.01
    res3 = ask(dict(m=1), near)
    assert res3.ok and list(res3.arrays["ids"]) == list(ok_add.arrays["ids"]) and res3.arrays["latents"][0, 0, 0] == 7.0
    assert not graph.failed()
    # every request left a hash-chained audit record: which key, which entries, the outcome
    trail = tmp_path / "store" / "audit.log"
    assert verify_audit(trail)["ok"]
    recs = show_audit(trail)
    assert [r["action"] for r in recs].count("retrieve") == len(bad) + 3
    assert {r["key"] for r in recs} == {"robot", "admin"}
    assert any(r["action"] == "retrieve" and r["ok"] and r["ids"] == sorted(int(i) for i in ids) for r in recs)
    assert any(r["action"] == "add" and r["ok"] and r["ids"] == [int(i) for i in ok_add.arrays["ids"]] for r in recs)
    assert any(r["action"] == "add" and not r["ok"] and "latents" in r["reason"] for r in recs)


@pytest.mark.parametrize("store_node", [{"rate_limit_hz": 0.5, "rate_limit_burst": 3}], indirect=True)
def test_store_service_refuses_other_models_and_rate_limits_keys(store_node) -> None:
    ask, _, robot_b, graph = store_node
    q = np.ones(DIM, np.float32)
    # the same generator weights at another path (same digest) are served
    res = ask(dict(m=2, generator="/robot/g.safetensors#ab12cd34"), q)
    assert res.ok, res.message
    res = ask(dict(m=2, generator="/robot/g2.safetensors#ffff0000"), q)
    assert not res.ok and "built for generator" in res.message and "g2.safetensors" in res.message
    res = ask(dict(m=2, reid="agw:/m.pth#00"), q)
    assert not res.ok and "built for reid" in res.message
    # key "robot" spent its burst of 3 (refused requests count too); 0.5 Hz refills far slower than this test
    res = ask(dict(m=2), q)
    assert not res.ok and "rate limit" in res.message
    res = ask(dict(m=2), q, sealer=robot_b)
    assert res.ok, res.message
    assert not graph.failed()


@pytest.mark.parametrize("reliability", [ReliabilityPolicy.BEST_EFFORT, ReliabilityPolicy.RELIABLE])
def test_detector_receives_best_effort_and_reliable_cameras(tmp_path: Path, reliability) -> None:
    cfg = write_params(tmp_path / "p.yaml", {"ros": {"camera_topic": "/qos_cam"}})
    graph = Graph()
    graph.start(["detector_node"], str(cfg))
    probe = Probe("qos_probe")
    try:
        crops = probe.collect(PersonCrops, "/latent_rag/crops")
        pub = probe.node.create_publisher(Image, "/qos_cam", QoSProfile(depth=5, reliability=reliability))
        wait_for(lambda: pub.get_subscription_count() > 0, 60, "detector subscription")
        frames = vtest_frames([100, 200, 300])
        deadline = time.monotonic() + 60
        while not crops and time.monotonic() < deadline:
            for f in frames:
                pub.publish(bgr_to_image(f))
            time.sleep(1.0)
        assert crops, "no person crops from the detector"
        assert crops[0].crops[0].image.height > 0
        bad = Image(height=10, width=10, encoding="bgr8", step=30)
        bad.data = bytes(7)
        pub.publish(bad)  # malformed: counted and skipped, the node keeps running
        n = len(crops)
        deadline = time.monotonic() + 60
        while len(crops) == n and time.monotonic() < deadline:
            for f in frames:
                pub.publish(bgr_to_image(f))
            time.sleep(1.0)
        assert len(crops) > n, "no crops after a malformed frame"
        assert not graph.failed()
    finally:
        graph.stop()
        probe.close()
