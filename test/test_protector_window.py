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


def _protector_graph(tmp_path, protector: dict, ros: dict | None = None):
    """Parameters, a 12-entry store built for the random generator, the link keys: (config file, config)."""
    params = {"models": {"generator": "random"},
              "protector": {"m": 3, "steps": 1, "batch_size": 4, "device": "cpu", **protector},
              "store": {"path": str(tmp_path / "store")}, "ros": {"service_timeout_s": 10.0, **(ros or {})}}
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
    return cfg_file, cfg


def _crop(frame: np.ndarray, track: int, sec: int = 0) -> PersonCrop:
    crop = frame[100 + 10 * track:228 + 10 * track, 200:264]
    box = RegionOfInterest(x_offset=200, y_offset=100 + 10 * track, width=64, height=128)
    image = bgr_to_image(crop)
    image.header.stamp.sec = sec
    return PersonCrop(header=image.header, image=image, box=box, track_id=track)


def _start(graph: Graph, probe: Probe, cfg_file, cfg, depth: int):
    """Start the store and protector nodes; (protected crops collected, crop publisher once matched)."""
    graph.start(["store_node", "protector_node"], str(cfg_file))
    out = probe.collect(ProtectedCrop, ros_name(cfg.ros.protected_topic))
    pub = probe.node.create_publisher(PersonCrops, ros_name(cfg.ros.crops_topic), depth)
    wait_for(lambda: pub.get_subscription_count() > 0, 120, "protector subscription")
    return out, pub


@pytest.mark.parametrize("workers", [1, 2])
def test_crops_of_several_frames_share_one_batch(tmp_path, workers: int) -> None:
    """workers=2: two worker threads share the window (core/parallel.py's processes behind them)."""
    cfg_file, cfg = _protector_graph(tmp_path, {"batch_window_ms": 3000.0, "workers": workers})
    frame = vtest_frames([300])[0]
    graph = Graph()
    probe = Probe("window_probe")
    try:
        out, pub = _start(graph, probe, cfg_file, cfg, depth=10)
        diags = probe.collect(DiagnosticArray, "/diagnostics")
        # Three frames of one crop each, well inside one window. A round whose crops were dropped (the
        # store client not yet matched on a loaded machine: counted, nothing published) is sent again.
        for _ in range(3):
            before = len(out)
            for track in (1, 2, 3):
                pub.publish(PersonCrops(crops=[_crop(frame, track)]))
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


def test_frames_protected_side_by_side_leave_in_camera_order(tmp_path) -> None:
    """Two workers, no window: frames of three crops and of one crop alternate, so a later frame can finish
    first. What leaves must follow the order the frames were taken in: camera stamps never go back."""
    cfg_file, cfg = _protector_graph(tmp_path, {"batch_window_ms": 0.0, "workers": 2}, {"max_queue": 16})
    frame = vtest_frames([300])[0]
    graph = Graph()
    probe = Probe("order_probe")
    try:
        out, pub = _start(graph, probe, cfg_file, cfg, depth=20)
        # warm-up frame: the store client matched and both workers up before the frames that count
        pub.publish(PersonCrops(crops=[_crop(frame, 0, sec=0)]))
        wait_for(lambda: len(out) >= 1 or graph.failed(), 120, "the first protected crop")
        sent = 0
        for sec in range(1, 9):
            tracks = (1, 2, 3) if sec % 2 else (4,)
            pub.publish(PersonCrops(crops=[_crop(frame, t, sec=sec) for t in tracks]))
            sent += len(tracks)
            time.sleep(0.05)
        wait_for(lambda: len(out) >= 1 + sent or graph.failed(), 180, f"{sent} protected crops")
        assert not graph.failed(), f"a node died: {graph.failed()}"
    finally:
        graph.stop(timeout=60.0)
        probe.close()
    stamps = [m.header.stamp.sec for m in list(out)[1:]]
    assert sorted(stamps) == [s for s in range(1, 9) for _ in range(3 if s % 2 else 1)]   # all of them ...
    assert stamps == sorted(stamps), f"published out of camera order: {stamps}"         # ... in order
