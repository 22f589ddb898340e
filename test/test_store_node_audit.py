"""store_node's audit hook, in-process on a real rclpy context and a real store: every request is
recorded, abnormal retrieval rates show in the node's status, and nothing is served unaudited."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rclpy

from latent_rag_ros.nodes import link
from latent_rag_ros.security import ClientSealer, new_key
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
    keys = tmp_path / "keys"
    sealers = {name: ClientSealer(new_key(keys, name, "robot")) for name in ("robotA", "robotB")}
    params = write_params(tmp_path / "p.yaml", {"store": {"path": str(tmp_path / "store"), "audit_flag_count": 2,
                                                          "audit_window_s": 600.0},
                                                "link": {"keys_dir": str(keys)}})
    if rclpy.ok():
        rclpy.shutdown()
    rclpy.init(args=["--ros-args", "-p", f"config_file:={params}"])
    from latent_rag_ros.nodes.store_node import StoreNode

    n = StoreNode()
    assert n.start_up() == "", n.open_error   # configure + activate (lifecycle node)
    n.sealers = sealers
    assert n.store is not None and n.audit is not None, n.open_error
    yield n
    n.destroy_node()
    rclpy.shutdown()


def _ask(node, client: str = "robotA", m: int = 2):
    sealer = node.sealers[client]
    env = sealer.seal("retrieve", {"m": m, "exclude_id": -1}, {"identity": np.ones(DIM, np.float32)})
    return link.open_reply(sealer, "retrieve", env,
                           node.on_retrieve(link.to_request("retrieve", env), RetrieveLatents.Response()))


def test_requests_are_audited_and_abnormal_rates_flagged(node, tmp_path: Path) -> None:
    first = _ask(node)
    assert first.ok and "flagged_entries" not in node.status.flags
    first_ids = [int(i) for i in first.arrays["ids"]]
    assert not _ask(node, m=99).ok  # refused: recorded too
    _ask(node)
    third = _ask(node, client="robotB")  # the same two entries a third time: above audit_flag_count=2
    assert third.ok and [int(i) for i in third.arrays["ids"]] == first_ids
    assert node.status.flags["flagged_entries"] == "2"  # a count only: /diagnostics is readable on the network
    assert {f["id"] for f in node.audit.monitor.flagged()} == set(first_ids)
    trail = tmp_path / "store" / "audit.log"
    assert verify_audit(trail)["ok"]
    recs = show_audit(trail, action="retrieve")
    assert [(r["key"], r["ok"]) for r in recs] == [("robotA", True), ("robotA", False), ("robotA", True),
                                                   ("robotB", True)]
    assert recs[0]["ids"] == sorted(first_ids) and "m=99" in recs[1]["reason"]


def test_nothing_is_served_when_the_audit_record_cannot_be_written(node) -> None:
    assert _ask(node).ok
    os.close(node.audit._fd)  # simulated I/O failure of the audit file (the descriptor goes away)
    node.audit._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
    res = _ask(node)
    assert not res.ok and "audit trail unavailable" in res.message and "latents" not in (res.arrays or {})
    assert node.status.counters["audit_errors"] >= 1
