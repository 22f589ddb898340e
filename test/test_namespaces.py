"""Two namespaced graphs on one ROS domain do not cross (relative names resolve in each namespace).

Two detector nodes (namespaces /robot1 and /robot2) and two store nodes with different stores, all
on the same domain: frames published to /robot1/image_raw come out only on /robot1/crops, and each
namespace's retrieve_latents service answers from its own store.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.msg import PersonCrops
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.nodes.link import call
from latent_rag_ros.security import ClientSealer, new_key
from latent_rag_ros.srv import RetrieveLatents
from latent_rag_ros.store import open_store

from rosutil import Probe, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros
DIM, L, C = 8, 2, 4


def _store(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    s = open_store(path, create=True, dim=DIM, num_ws=L, w_dim=C)
    s.add(rng.normal(size=(4, DIM)).astype(np.float32), rng.normal(size=(4, L, C)).astype(np.float32),
          [f"{path.name}-{i}" for i in range(4)])
    version = s.version
    s.close()
    return version


def test_two_namespaced_graphs_do_not_cross(tmp_path: Path) -> None:
    graphs = {ns: Graph() for ns in ("robot1", "robot2")}
    versions = {}
    probe = Probe("ns_probe")
    keys = str(tmp_path / "keys")
    sealer = ClientSealer(new_key(keys, "ns_probe", "robot"))   # the sealed store link needs a robot key
    try:
        for i, (ns, graph) in enumerate(graphs.items()):
            versions[ns] = _store(tmp_path / f"store_{ns}", seed=i)
            cfg = write_params(tmp_path / f"{ns}.yaml", {"store": {"path": str(tmp_path / f"store_{ns}")},
                                                        "link": {"keys_dir": keys}})
            graph.start(["detector_node", "store_node"], str(cfg), namespace=f"/{ns}")
        crops = {ns: probe.collect(PersonCrops, f"/{ns}/crops") for ns in graphs}
        cam = probe.node.create_publisher(Image, "/robot1/image_raw",
                                          QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        clients = {ns: probe.node.create_client(RetrieveLatents, f"/{ns}/retrieve_latents") for ns in graphs}
        # endpoints are discovered one by one: wait for all four, then check nothing crossed
        wait_for(lambda: cam.get_subscription_count() >= 1 and all(c.service_is_ready() for c in clients.values())
                 and probe.node.count_publishers("/robot2/crops") == 1
                 and probe.node.count_subscribers("/robot2/image_raw") == 1, 120, "both namespaced graphs")
        assert cam.get_subscription_count() == 1   # robot1's camera has robot1's detector only, not robot2's
        for ns, client in clients.items():
            reply = call(probe.node, client, sealer, "retrieve", {"m": 2, "exclude_id": -1},
                         {"identity": np.ones(DIM, np.float32)}, timeout_s=30)
            assert reply.ok and reply.meta["store_version"] == versions[ns], reply.message
        assert versions["robot1"] != versions["robot2"]
        frames = vtest_frames([100, 200, 300])
        deadline = time.monotonic() + 120
        while not crops["robot1"] and time.monotonic() < deadline:
            for f in frames:
                cam.publish(bgr_to_image(f))
            time.sleep(1.0)
        assert crops["robot1"], "robot1's detector produced no crops"
        time.sleep(2.0)  # give a wrongly wired robot2 time to show up (the assertion is on absence)
        assert not crops["robot2"], "robot1's frames reached robot2's graph"
        assert all(not g.failed() for g in graphs.values())
    finally:
        codes = {ns: g.stop() for ns, g in graphs.items()}
        probe.close()
    assert all(c == 0 for cs in codes.values() for c in cs.values()), codes
