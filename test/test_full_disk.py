"""A full disk: store adds on a small tmpfs made by the test fail clearly; nothing acknowledged is lost.

Real filesystem (tmpfs mounted with ``size=``; needs root, skipped otherwise), real store through
the public API only (open_store / add / search / close), and the real StoreNode service handler.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rclpy

from latent_rag_ros.srv import AddIdentities, RetrieveLatents
from latent_rag_ros.store import open_store

from rosutil import write_params

DIM, L, C = 64, 8, 64          # one entry: 64 + 8*64 float32 values, about 2.3 KB
BATCH = 16


@pytest.fixture()
def small_fs(tmp_path: Path):
    """A 1.5 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(BATCH, DIM)).astype(np.float32), rng.normal(size=(BATCH, L, C)).astype(np.float32)


def test_adds_fail_clearly_when_full_and_every_acknowledged_entry_survives(small_fs: Path) -> None:
    rng = np.random.default_rng(0)
    store = open_store(small_fs / "store", create=True, dim=DIM, num_ws=L, w_dim=C)
    acked: dict[int, np.ndarray] = {}
    error = None
    for i in range(400):   # far more than fits
        vec, lat = _batch(rng)
        try:
            ids = store.add(vec, lat, [f"b{i}_{j}" for j in range(BATCH)])
        except Exception as exc:  # noqa: BLE001 - the test inspects what the store raises
            error = exc
            break
        acked.update({int(k): v / np.linalg.norm(v) for k, v in zip(ids, vec)})
    assert error is not None, "1.5 MiB never filled up"
    assert acked, "nothing fitted at all"
    msg = str(error)
    assert isinstance(error, OSError | RuntimeError | ValueError), repr(error)
    assert "space" in msg.lower() or "full" in msg.lower(), msg
    # the store keeps serving reads after the failed add, and a second add fails the same way
    probe = next(iter(acked))
    _, ids = store.search(acked[probe][None], 1)
    assert ids[0, 0] == probe
    with pytest.raises(Exception, match=r"(?i)space|full"):
        store.add(*_batch(rng))
    assert len(store) == len(acked)
    store.close()
    # every acknowledged entry survives a reopen, nothing unacknowledged appears
    again = open_store(small_fs / "store")
    try:
        assert len(again) == len(acked)
        keys = np.asarray(sorted(acked), np.int64)
        got = again.get_vectors(keys)
        assert np.allclose(got, np.stack([acked[int(k)] for k in keys]), atol=1e-5)
        _, ids = again.search(acked[int(keys[-1])][None], 1)
        assert ids[0, 0] == keys[-1]
    finally:
        again.close()


def test_store_node_refuses_adds_on_a_full_disk_and_keeps_serving(small_fs: Path, tmp_path: Path) -> None:
    """The service handler (real StoreNode in-process): ok=false with the reason, retrievals still answered."""
    rng = np.random.default_rng(1)
    store = open_store(small_fs / "store", create=True, dim=DIM, num_ws=L, w_dim=C)
    store.add(*_batch(rng))
    store.close()
    from latent_rag_ros.nodes import link
    from latent_rag_ros.security import ClientSealer, new_key

    admin = ClientSealer(new_key(tmp_path / "keys", "admin", "admin"))
    robot = ClientSealer(new_key(tmp_path / "keys", "robot", "robot"))
    # the audit trail lives on another filesystem (as it should): on the full one nothing could be served,
    # since store_node serves nothing it cannot audit
    params = write_params(tmp_path / "p.yaml", {"store": {"path": str(small_fs / "store"), "max_add": BATCH,
                                                          "audit_file": str(tmp_path / "audit.log")},
                                                "link": {"keys_dir": str(tmp_path / "keys")}})
    if rclpy.ok():
        rclpy.shutdown()
    rclpy.init(args=["--ros-args", "-p", f"config_file:={params}"])
    from latent_rag_ros.nodes.store_node import StoreNode

    node = StoreNode()
    assert node.start_up() == "", node.open_error   # configure + activate (lifecycle node)
    try:
        refused = None
        acked = BATCH
        for _ in range(400):
            vec, lat = _batch(rng)
            env = admin.seal("add", {"count": BATCH}, {"identities": vec, "latents": lat})
            res = link.open_reply(admin, "add", env, node.on_add(link.to_request("add", env), AddIdentities.Response()))
            if not res.ok:
                refused = res
                break
            acked += BATCH
            assert res.meta["size"] == acked
        assert refused is not None and ("space" in refused.message.lower() or "full" in refused.message.lower()), \
            refused.message if refused else "never full"
        assert node.status.counters["errors"] >= 1
        env = robot.seal("retrieve", {"m": 2, "exclude_id": -1}, {"identity": rng.normal(size=DIM).astype(np.float32)})
        got = link.open_reply(robot, "retrieve", env,
                              node.on_retrieve(link.to_request("retrieve", env), RetrieveLatents.Response()))
        assert got.ok, got.message
        assert len(node.store) == acked
    finally:
        node.destroy_node()
        rclpy.shutdown()
    again = open_store(small_fs / "store")
    try:
        assert len(again) == acked
    finally:
        again.close()
