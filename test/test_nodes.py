"""Single nodes over real DDS: the store service's answers to bad requests, camera QoS handling."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.msg import PersonCrops
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.srv import AddIdentities, RetrieveLatents
from latent_rag_ros.store import open_store
from latent_rag_ros.store.audit import show_audit, verify_audit

from rosutil import Probe, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
DIM, L, C = 8, 4, 6
VECS = np.random.default_rng(0).normal(size=(5, DIM)).astype(np.float32)


def _call(probe: Probe, client, req, timeout: float = 10.0):
    fut = client.call_async(req)
    wait_for(fut.done, timeout, "service reply")
    return fut.result()


BUILT_WITH = {"generator": "/srv/models/g.safetensors#ab12cd34", "reid": "deepsort_mobilenetv2:builtin"}


@pytest.fixture()
def store_node(tmp_path: Path, request):
    store = open_store(tmp_path / "store", create=True, dim=DIM, num_ws=L, w_dim=C, built_with=BUILT_WITH)
    store.add(VECS, np.random.default_rng(1).normal(size=(5, L, C)).astype(np.float32), [f"p{i}" for i in range(5)])
    store.close()
    extra = getattr(request, "param", {})
    cfg = write_params(tmp_path / "p.yaml", {"store": {"path": str(tmp_path / "store"), "max_m": 4, **extra}})
    graph = Graph()
    graph.start(["store_node"], str(cfg))
    probe = Probe("store_probe")
    retrieve = probe.node.create_client(RetrieveLatents, "/latent_rag/retrieve_latents")
    add = probe.node.create_client(AddIdentities, "/latent_rag/add_identities")
    wait_for(lambda: retrieve.service_is_ready() and add.service_is_ready(), 60, "store services")
    yield probe, retrieve, add, graph
    codes = graph.stop()
    probe.close()
    assert codes == {"store_node": 0}


def test_store_service_answers_bad_requests_and_keeps_serving(store_node, tmp_path: Path) -> None:
    probe, retrieve, add, graph = store_node
    good = np.ones(DIM, np.float32).tolist()
    bad = [
        (dict(identity=[1.0] * (DIM - 1), m=2), "length"),
        (dict(identity=[math.nan] + [1.0] * (DIM - 1), m=2), "NaN"),
        (dict(identity=good, m=0), "m=0"),
        (dict(identity=good, m=5), "m=5"),          # above max_m=4
        # 5 entries: the query's own (an exact duplicate of p1) and label p0 excluded leave 3 < m
        (dict(identity=VECS[1].tolist(), m=4, exclude_label="p0"), "eligible"),
    ]
    for fields, needle in bad:
        res = _call(probe, retrieve, RetrieveLatents.Request(exclude_id=-1, **fields))
        assert not res.ok and needle in res.message, (fields, res.message)
    res = _call(probe, retrieve, RetrieveLatents.Request(identity=good, m=3, exclude_id=-1))
    assert res.ok, res.message
    assert list(res.shape) == [3, L, C] and len(res.latents) == 3 * L * C and len(res.ids) == 3
    assert list(res.scores) == sorted(res.scores, reverse=True)
    # excluding an id removes it
    res2 = _call(probe, retrieve, RetrieveLatents.Request(identity=good, m=3, exclude_id=int(res.ids[0])))
    assert res2.ok and res.ids[0] not in list(res2.ids)
    # incremental add, then the new entry is served
    v = np.zeros(DIM, np.float32)
    v[0] = 1.0
    bad_add = _call(probe, add, AddIdentities.Request(count=1, identities=v.tolist(), latents=[0.0] * 3, labels=["x"]))
    assert not bad_add.ok and "latents" in bad_add.message
    ok_add = _call(probe, add, AddIdentities.Request(count=1, identities=v.tolist(),
                                                     latents=[7.0] * (L * C), labels=["new"]))
    assert ok_add.ok and ok_add.size == 6 and ok_add.store_version != res.store_version
    near = v.copy()
    near[1] = 0.01
    res3 = _call(probe, retrieve, RetrieveLatents.Request(identity=near.tolist(), m=1, exclude_id=-1))
    assert res3.ok and list(res3.ids) == list(ok_add.ids) and res3.latents[0] == 7.0
    assert not graph.failed()
    # every request left a hash-chained audit record: who, which entries, the outcome
    trail = tmp_path / "store" / "audit.log"
    assert verify_audit(trail)["ok"]
    recs = show_audit(trail)
    assert [r["action"] for r in recs].count("retrieve") == len(bad) + 3
    assert any(r["action"] == "retrieve" and r["ok"] and r["ids"] == sorted(res.ids) for r in recs)
    assert any(r["action"] == "add" and r["ok"] and r["ids"] == list(ok_add.ids) for r in recs)
    assert any(r["action"] == "add" and not r["ok"] and "latents" in r["reason"] for r in recs)


@pytest.mark.parametrize("store_node", [{"rate_limit_hz": 0.5, "rate_limit_burst": 3}], indirect=True)
def test_store_service_refuses_other_models_and_rate_limits_clients(store_node) -> None:
    probe, retrieve, _, graph = store_node
    q = dict(identity=np.ones(DIM, np.float32).tolist(), m=2, exclude_id=-1)
    # the same generator weights at another path (same digest) are served
    res = _call(probe, retrieve, RetrieveLatents.Request(generator="/robot/g.safetensors#ab12cd34", client="a", **q))
    assert res.ok, res.message
    res = _call(probe, retrieve, RetrieveLatents.Request(generator="/robot/g2.safetensors#ffff0000", client="a", **q))
    assert not res.ok and "built for generator" in res.message and "g2.safetensors" in res.message
    res = _call(probe, retrieve, RetrieveLatents.Request(reid="agw:/m.pth#00", client="a", **q))
    assert not res.ok and "built for reid" in res.message
    # client "a" spent its burst of 3 (refused requests count too); 0.5 Hz refills far slower than this test
    res = _call(probe, retrieve, RetrieveLatents.Request(client="a", **q))
    assert not res.ok and "rate limit" in res.message
    res = _call(probe, retrieve, RetrieveLatents.Request(client="b", **q))
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
