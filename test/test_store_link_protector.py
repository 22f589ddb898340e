"""A real protector behind the relay: without its robot key it publishes nothing; with it, it gets latents.

A module of its own: test_store_link.py keeps a store_node and relay_node running for its whole module,
and a second store on the same domain would answer this protector's requests too (with other keys).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray

from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.security import new_key
from latent_rag_ros.store import open_store

from rosutil import Probe, wait_for, write_params

pytestmark = pytest.mark.ros


def test_protector_without_key_publishes_nothing_then_retrieves_through_the_relay(tmp_path: Path) -> None:
    """Real protector_node (random-weight generator, real re-ID) -> relay_node -> store_node, sealed end to end.

    Without its robot key the protector publishes nothing (fail safe); once the key file is
    provisioned it picks it up without a restart, and its requests reach the store via the relay.
    """
    import torch
    from sensor_msgs.msg import RegionOfInterest

    from latent_rag_ros.config import load_config
    from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
    from latent_rag_ros.msg import PersonCrop, PersonCrops, ProtectedCrop
    from latent_rag_ros.nodes.common import bgr_to_image
    from latent_rag_ros.people import crop_people

    from rosutil import vtest_frames

    params = {"models": {"generator": "random", "latent_encoder": "random"},
              "protector": {"m": 2, "steps": 1, "batch_size": 2, "device": "cpu"},
              "store": {"path": str(tmp_path / "store")},
              "link": {"keys_dir": str(tmp_path / "keys"), "via_relay": True},
              "ros": {"service_timeout_s": 10.0, "status_period_s": 0.5}}
    cfg_file = write_params(tmp_path / "p.yaml", params)
    cfg = load_config(cfg_file)
    with torch.no_grad():
        models = build_models(cfg, "cpu", with_encoder=False)
    g = models.generator
    rng = np.random.default_rng(0)
    with open_store(cfg.store.path, create=True, dim=models.reid.dim, num_ws=g.num_ws, w_dim=g.w_dim,
                    built_with=model_fingerprint(models)) as store:
        store.add(rng.normal(size=(8, models.reid.dim)).astype(np.float32),
                  rng.normal(size=(8, g.num_ws, g.w_dim)).astype(np.float32))
    new_key(tmp_path / "keys", "admin", "admin")            # the store has keys, the robot has none yet
    people = []
    for frame in vtest_frames([100, 200]):
        people += crop_people(build_detector(cfg), frame, cfg.detector)[:1]
    assert people, "HOG found nobody in vtest frames 100/200"
    batch = PersonCrops(crops=[PersonCrop(image=bgr_to_image(p.crop), track_id=i, box=RegionOfInterest(
        x_offset=p.box[0], y_offset=p.box[1], width=p.box[2] - p.box[0], height=p.box[3] - p.box[1]))
        for i, p in enumerate(people)])
    graph = Graph()
    graph.start(["store_node", "relay_node", "protector_node"], str(cfg_file))
    probe = Probe("protector_link_probe")
    try:
        out = probe.collect(ProtectedCrop, "/latent_rag/protected")
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(PersonCrops, "/latent_rag/crops", 10)
        wait_for(lambda: pub.get_subscription_count() > 0, 180, "the protector's crop subscription")

        def status(node: str) -> dict[str, str]:
            for arr in reversed(list(diags)):
                for st in arr.status:
                    if st.name.endswith(node):
                        return {kv.key: kv.value for kv in st.values}
            return {}

        pub.publish(batch)
        # the batch was processed (its crops dropped for want of latents) and nothing was published
        wait_for(lambda: status("protector_node").get("link_key") == "False"
                 and int(status("protector_node").get("crops_dropped_store", 0)) >= 1, 60,
                 "the protector to drop the batch for want of a key")
        assert out == [] and not graph.failed()
        new_key(tmp_path / "keys", "robot", "robot")        # provisioned while everything runs

        def published() -> bool:
            if not out:
                pub.publish(batch)
                time.sleep(2.0)
            return bool(out)

        wait_for(published, 240, "protected crops after the key was provisioned")
        assert out[0].m == 2 and out[0].image.height == people[out[0].track_id].crop.shape[0]
        wait_for(lambda: int(status("relay_node").get("forwarded", 0)) >= 1, 30, "the relay's forwarded count")
        # the protector sent nothing while it had no key, and none of its requests was refused afterwards
        assert int(status("store_node").get("refused", 0)) == 0
        assert not graph.failed()
    finally:
        codes = graph.stop(timeout=30)
        probe.close()
    assert codes == {"store_node": 0, "relay_node": 0, "protector_node": 0}
