"""store_node's audit hook, in-process on a real rclpy context and a real store: every request is
recorded, abnormal retrieval rates show in the node's status, and nothing is served unaudited."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rclpy

from latent_rag_ros.srv import RetrieveLatents
from latent_rag_ros.store import open_store
from latent_rag_ros.store.audit import show_audit, verify_audit

from rosutil import write_params

DIM, L, C = 8, 2, 4


@pytest.fixture()
def node(tmp_path: Path):
    s = open_store(tmp_path / "store", create=True, dim=DIM, num_ws=L, w_dim=C)
    s.add(np.random.default_rng(0).normal(size=(6, DIM)), np.zeros((6, L, C)), [f"p{i}" for i in range(6)])
    s.close()
    params = write_params(tmp_path / "p.yaml", {"store": {"path": str(tmp_path / "store"), "audit_flag_count": 2,
                                                          "audit_window_s": 600.0}})
    if rclpy.ok():
        rclpy.shutdown()
    rclpy.init(args=["--ros-args", "-p", f"config_file:={params}"])
    from latent_rag_ros.nodes.store_node import StoreNode

    n = StoreNode()
    assert n.store is not None and n.audit is not None, n.open_error
    yield n
    n.destroy_node()
    rclpy.shutdown()


def _ask(node, client: str = "robotA", m: int = 2) -> RetrieveLatents.Response:
    req = RetrieveLatents.Request(identity=[1.0] * DIM, m=m, exclude_id=-1, client=client)
    return node.on_retrieve(req, RetrieveLatents.Response())


def test_requests_are_audited_and_abnormal_rates_flagged(node, tmp_path: Path) -> None:
    first = _ask(node)
    assert first.ok and "flagged" not in node.status.flags
    assert not _ask(node, m=99).ok  # refused: recorded too
    _ask(node)
    third = _ask(node, client="robotB")  # the same two entries a third time: above audit_flag_count=2
    assert third.ok and list(third.ids) == list(first.ids)
    assert "flagged" in node.status.flags and str(int(first.ids[0])) in node.status.flags["flagged"]
    trail = tmp_path / "store" / "audit.log"
    assert verify_audit(trail)["ok"]
    recs = show_audit(trail, action="retrieve")
    assert [(r["key"], r["ok"]) for r in recs] == [("robotA", True), ("robotA", False), ("robotA", True),
                                                   ("robotB", True)]
    assert recs[0]["ids"] == sorted(int(i) for i in first.ids) and "m=99" in recs[1]["reason"]


def test_nothing_is_served_when_the_audit_record_cannot_be_written(node) -> None:
    assert _ask(node).ok
    os.close(node.audit._fd)  # simulated I/O failure of the audit file (the descriptor goes away)
    node.audit._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
    res = _ask(node)
    assert not res.ok and "audit trail unavailable" in res.message and len(res.latents) == 0
    assert node.status.counters["audit_errors"] >= 1
