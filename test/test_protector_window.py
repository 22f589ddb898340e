"""The protector node's micro-batching window over real DDS: crops of several frames share one batch.

Real store_node and protector_node processes; random-weight generator (no pretrained StyleGAN offline),
the real DeepSORT re-ID weights. The window's timing guarantee is tested on an injected clock in
test_batching.py; this test only checks the node wiring (crops of three frames, one protection call).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import RegionOfInterest

from latent_rag_ros.config import load_config, ros_name
from latent_rag_ros.models.factory import build_models, model_fingerprint
from latent_rag_ros.msg import PersonCrop, PersonCrops, ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import Graph, provision_local_keys
from latent_rag_ros.store import open_store

from rosutil import Probe, node_status, vtest_frames, wait_for, write_params

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("workers", [1, 2])
def test_crops_of_several_frames_share_one_batch(tmp_path, workers: int) -> None:
    """workers=2: two worker threads share the window (core/parallel.py's processes behind them)."""
    params = {"models": {"generator": "random"},
              "protector": {"m": 3, "steps": 1, "batch_size": 4, "device": "cpu", "batch_window_ms": 3000.0,
                            "workers": workers},
              "store": {"path": str(tmp_path / "store")}, "ros": {"service_timeout_s": 10.0}}
    cfg_file = write_params(tmp_path / "p.yaml", params)
    cfg = load_config(cfg_file)
    models = build_models(cfg, "cpu", with_encoder=False)
    g = models.generator
    with torch.no_grad():
        ws = g.mapping(torch.randn(12, g.z_dim)).numpy()
    vecs = np.random.default_rng(0).normal(size=(12, models.reid.dim)).astype(np.float32)
    store = open_store(cfg.store.path, create=True, dim=models.reid.dim, num_ws=g.num_ws, w_dim=g.w_dim,
                       built_with=model_fingerprint(models))
    store.add(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), ws)
    store.close()
    provision_local_keys(str(cfg_file))   # the local store's robot + admin link keys
    frame = vtest_frames([300])[0]
    graph = Graph()
    probe = Probe("window_probe")
    try:
        graph.start(["store_node", "protector_node"], str(cfg_file))
        out = probe.collect(ProtectedCrop, ros_name(cfg.ros.protected_topic))
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(PersonCrops, ros_name(cfg.ros.crops_topic), 10)
        wait_for(lambda: pub.get_subscription_count() > 0, 120, "protector subscription")
        # Three frames of one crop each, well inside one window. A round whose crops were dropped (the
        # store client not yet matched on a loaded machine: counted, nothing published) is sent again.
        for _ in range(3):
            before = len(out)
            for track in (1, 2, 3):
                msg = PersonCrops()
                crop = frame[100 + 10 * track:228 + 10 * track, 200:264]
                box = RegionOfInterest(x_offset=200, y_offset=100 + 10 * track, width=64, height=128)
                msg.crops = [PersonCrop(image=bgr_to_image(crop), box=box, track_id=track)]
                pub.publish(msg)
            try:
                wait_for(lambda b=before: len(out) >= b + 3 or graph.failed(), 60, "three protected crops")
                break
            except AssertionError:
                continue
        assert not graph.failed(), f"a node died: {graph.failed()}"
        out = list(out)[-3:]
        # the node says how many protection processes it runs (1 = in-process)
        wait_for(lambda: node_status(diags, "protector_node").get("workers") == str(workers), 30,
                 "workers on /diagnostics")
    finally:
        t0 = time.monotonic()
        codes = graph.stop(timeout=60.0)
        print(f"graph stopped in {time.monotonic() - t0:.1f} s")
        probe.close()
    assert sorted(m.track_id for m in out) == [1, 2, 3]
    assert len({tuple(m.stage_ms) for m in out}) == 1, "the three frames were protected in separate batches"
    assert all(c == 0 for c in codes.values()), codes
