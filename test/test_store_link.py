"""The trusted store link over real DDS: a real store_node (and relay_node) process, real keys, real AES-GCM.

Valid robot key -> latents; no key, unknown key, wrong secret, revoked key, stale timestamp, replayed
nonce, tampered ciphertext or an old protocol -> ok=false and nothing else (no latents, ids or size,
nothing sealed). Adds and removals need the admin key. Key changes take effect without a restart,
refusals are counted in /diagnostics, and the relay forwards envelopes it cannot read.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray

from latent_rag_ros.core.retrieval import retrieve
from latent_rag_ros.nodes import link
from latent_rag_ros.nodes.graph import Graph
from latent_rag_ros.security import ClientSealer, SealedRequest, new_key, revoke_key
from latent_rag_ros.srv import AddIdentities, RemoveIdentities, RetrieveLatents
from latent_rag_ros.store import open_store

from rosutil import Probe, wait_for, write_params

pytestmark = pytest.mark.ros
DIM, L, C = 8, 4, 6
VECS = np.random.default_rng(0).normal(size=(5, DIM)).astype(np.float32)
REFUSED = {"not authenticated (unknown or revoked key, bad tag, stale timestamp or replayed nonce)",
           "not authorized: this key's role may not do this"}


class Link:
    """A probe node with clients of the three services (directly, or RetrieveLatents through the relay)."""

    def __init__(self, probe: Probe, retrieve_name: str) -> None:
        self.probe = probe
        self.retrieve = probe.node.create_client(RetrieveLatents, retrieve_name)
        self.add = probe.node.create_client(AddIdentities, "/latent_rag/add_identities")
        self.remove = probe.node.create_client(RemoveIdentities, "/latent_rag/remove_identities")
        wait_for(lambda: all(c.service_is_ready() for c in (self.retrieve, self.add, self.remove)), 60, "services")

    def raw(self, client, req, timeout: float = 10.0):
        fut = client.call_async(req)
        wait_for(fut.done, timeout, "service reply")
        return fut.result()

    def ask(self, sealer: ClientSealer, identity: np.ndarray, m: int = 2):
        return link.call(self.probe.node, self.retrieve, sealer, "retrieve", {"m": m, "exclude_id": -1},
                         {"identity": np.asarray(identity, np.float32)})

    def put(self, sealer: ClientSealer, n: int = 1, label: str = "new"):
        vec = np.random.default_rng(n).normal(size=(n, DIM)).astype(np.float32)
        return link.call(self.probe.node, self.add, sealer, "add", {"count": n, "labels": [label] * n},
                         {"identities": vec, "latents": np.zeros((n, L, C), np.float32)})


def assert_bare_refusal(res) -> None:
    """ok=false and nothing but the protocol and a fixed reason: no ciphertext, no nonce, no data fields."""
    assert not res.ok
    assert len(res.sealed) == 0 and len(res.nonce) == 0
    assert res.message in REFUSED or res.message.startswith("protocol version"), res.message
    assert set(res.get_fields_and_field_types()) == {"protocol", "ok", "message", "nonce", "sealed"}


@pytest.fixture(scope="module")
def link_graph(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("link")
    store = open_store(tmp / "store", create=True, dim=DIM, num_ws=L, w_dim=C)
    ids = store.add(VECS, np.random.default_rng(1).normal(size=(5, L, C)).astype(np.float32),
                    [f"p{i}" for i in range(5)])
    expected = retrieve(store, VECS[2], 3, [None], [None])   # what the node must serve for VECS[2], m=3
    store.close()
    keys = tmp / "keys"
    sealers = {name: ClientSealer(new_key(keys, name, role))
               for name, role in (("robot", "robot"), ("robot_r", "robot"), ("admin", "admin"))}
    cfg = write_params(tmp / "p.yaml", {"store": {"path": str(tmp / "store")}, "link": {"keys_dir": str(keys)},
                                        "ros": {"status_period_s": 0.3}})
    graph = Graph()
    graph.start(["store_node", "relay_node"], str(cfg))
    probe = Probe("link_probe")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    try:
        yield {"ids": [int(i) for i in ids], "expected": expected, "keys": keys, "sealers": sealers,
               "graph": graph, "probe": probe, "diags": diags,
               "direct": Link(probe, "/latent_rag/retrieve_latents"),
               "relay": Link(probe, "/latent_rag/relay/retrieve_latents")}
    finally:
        codes = graph.stop()
        probe.close()
        assert codes == {"store_node": 0, "relay_node": 0}


def _store_status(diags: list) -> dict[str, str]:
    for arr in reversed(list(diags)):
        for st in arr.status:
            if st.name.endswith("store_node"):
                return {kv.key: kv.value for kv in st.values}
    return {}


@pytest.mark.parametrize("path", ["direct", "relay"])
def test_valid_robot_key_gets_latents(link_graph, path: str) -> None:
    lk = link_graph[path]
    res = lk.ask(link_graph["sealers"]["robot"], VECS[2], m=3)
    assert res.ok, res.message
    assert res.arrays["latents"].shape == (3, L, C) and len(res.arrays["ids"]) == 3
    want = link_graph["expected"]
    assert res.arrays["ids"].tolist() == want.ids[0].tolist()
    assert np.array_equal(res.arrays["latents"], want.latents[0])


@pytest.mark.parametrize("path", ["direct", "relay"])
def test_refused_requests_get_nothing(link_graph, path: str, tmp_path: Path) -> None:
    lk, robot = link_graph[path], link_graph["sealers"]["robot"]
    q = {"identity": VECS[0]}
    # no key at all (an anonymous caller filling the fields as best it can)
    assert_bare_refusal(lk.raw(lk.retrieve, RetrieveLatents.Request(protocol=2)))
    # unknown key id, and the right id with the wrong secret
    stranger = ClientSealer(new_key(tmp_path / "elsewhere", "robot", "robot"))
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", stranger.seal("retrieve", {"m": 2}, q))))
    ghost = ClientSealer(new_key(tmp_path / "elsewhere", "ghost", "robot"))
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", ghost.seal("retrieve", {"m": 2}, q))))
    # stale timestamp (authentic, but 10 minutes old)
    old = robot.seal("retrieve", {"m": 2, "exclude_id": -1}, q, stamp_ns=time.time_ns() - 600 * 10**9)
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", old)))
    # replay: the first use is served, a captured copy is refused
    env = robot.seal("retrieve", {"m": 2, "exclude_id": -1}, q)
    first = lk.raw(lk.retrieve, link.to_request("retrieve", env))
    assert link.open_reply(robot, "retrieve", env, first).ok
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", env)))
    # tampered ciphertext, and a tampered envelope (timestamp moved without the key)
    env = robot.seal("retrieve", {"m": 2, "exclude_id": -1}, q)
    flipped = SealedRequest(env.protocol, env.key_id, env.stamp_ns, env.nonce,
                            env.sealed[:-1] + bytes([env.sealed[-1] ^ 0x40]))
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", flipped)))
    moved = SealedRequest(env.protocol, env.key_id, env.stamp_ns + 1, env.nonce, env.sealed)
    assert_bare_refusal(lk.raw(lk.retrieve, link.to_request("retrieve", moved)))
    # an old/other protocol version gets a clear refusal naming both versions
    res = lk.raw(lk.retrieve, RetrieveLatents.Request(protocol=1, key_id="robot"))
    assert_bare_refusal(res)
    assert "protocol version 1 not supported" in res.message and "protocol 2" in res.message
    # an admin key may not retrieve
    env = link_graph["sealers"]["admin"].seal("retrieve", {"m": 2, "exclude_id": -1}, q)
    res = lk.raw(lk.retrieve, link.to_request("retrieve", env))
    assert_bare_refusal(res)
    assert "not authorized" in res.message
    assert not link_graph["graph"].failed()


def test_admin_adds_robot_key_cannot_and_refusals_are_counted(link_graph) -> None:
    lk, s = link_graph["direct"], link_graph["sealers"]
    first = lk.put(s["admin"], 1, "added_one")
    assert first.ok, first.message
    size = int(first.meta["size"])
    refused = lk.raw(lk.add, link.to_request("add", s["robot"].seal("add", {"count": 1}, {
        "identities": np.ones((1, DIM), np.float32), "latents": np.zeros((1, L, C), np.float32)})))
    assert_bare_refusal(refused)
    assert_bare_refusal(lk.raw(lk.add, AddIdentities.Request(protocol=2)))   # anonymous add
    second = lk.put(s["admin"], 1, "added_two")
    assert second.ok and int(second.meta["size"]) == size + 1                # the refused adds added nothing
    # removal by label (erasure), admin only; robot keys are refused and remove nothing
    robot_rm = link.call(lk.probe.node, lk.remove, s["robot"], "remove", {"labels": ["p4"]})
    assert not robot_rm.ok and "not authorized" in robot_rm.message
    rm = link.call(lk.probe.node, lk.remove, s["admin"], "remove", {"labels": ["p4"]})
    p4 = link_graph["ids"][4]
    assert rm.ok and rm.arrays["ids"].tolist() == [p4] and int(rm.meta["size"]) == size
    res = lk.ask(s["robot"], VECS[4] + 0.01, m=3)
    assert res.ok and p4 not in res.arrays["ids"].tolist()
    wait_for(lambda: int(_store_status(link_graph["diags"]).get("refused_role", 0)) >= 2, 30, "refusals in status")
    status = _store_status(link_graph["diags"])
    assert int(status["refused"]) >= 2 and status["keys_admin"] == "1"
    # no labels in /diagnostics ("added_one", not "a1": a hex digest in the status may contain "a1")
    assert not any("p4" in v or "added_one" in v for v in status.values())
    assert "size" not in status                                                # nor the store size


def test_revoked_and_added_keys_take_effect_without_restart(link_graph) -> None:
    lk, keys = link_graph["direct"], link_graph["keys"]
    r = link_graph["sealers"]["robot_r"]
    assert lk.ask(r, VECS[1]).ok
    revoke_key(keys, "robot_r")
    res = lk.ask(r, VECS[1])
    assert not res.ok and res.message in REFUSED
    late = ClientSealer(new_key(keys, "late_robot", "robot"))
    res = lk.ask(late, VECS[1])
    assert res.ok, res.message
    wait_for(lambda: _store_status(link_graph["diags"]).get("keys_revoked") == "1", 30, "revocation in status")
    assert link_graph["graph"].failed() == {}
