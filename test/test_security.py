"""The trusted link's library (no ROS): key files, the reloading key ring, sealing, and every refusal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.cli import main as cli_main
from latent_rag_ros.security import (
    PROTOCOL_VERSION,
    ClientSealer,
    Gate,
    KeyFileError,
    KeyRing,
    RefusedError,
    SealedRequest,
    list_keys,
    load_key,
    new_key,
    pack,
    revoke_key,
    unpack,
)


class Clock:
    """A settable wall clock (ns) for freshness checks."""

    def __init__(self) -> None:
        self.t = 1_800_000_000 * 10**9

    def __call__(self) -> int:
        return self.t


@pytest.fixture()
def ring(tmp_path: Path):
    robot = new_key(tmp_path, "robot", "robot")
    admin = new_key(tmp_path, "admin", "admin")
    return tmp_path, KeyRing(tmp_path), ClientSealer(robot), ClientSealer(admin)


def test_key_files_are_private_and_show_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keys = tmp_path / "k"
    assert cli_main(["keys", "new", "r1", "--role", "robot", "--dir", str(keys)]) == 0
    path = keys / "r1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(keys.stat().st_mode) == 0o700
    secret = json.loads(path.read_text())["secret"]
    capsys.readouterr()
    assert cli_main(["keys", "show", "--dir", str(keys)]) == 0
    shown = capsys.readouterr()
    assert "r1" in shown.out and secret not in shown.out + shown.err
    assert load_key(path).secret.hex() not in shown.out
    assert cli_main(["keys", "new", "r1", "--dir", str(keys)]) == 2          # no silent overwrite
    assert cli_main(["keys", "revoke", "r1", "--dir", str(keys)]) == 0
    assert json.loads(path.read_text())["secret"] == "" and not load_key(path).valid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_checks(tmp_path: Path) -> None:
    key = new_key(tmp_path, "r", "robot")
    os.chmod(key.path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(key.path)
    os.chmod(key.path, 0o600)
    Path(key.path).rename(tmp_path / "other.key")
    with pytest.raises(KeyFileError, match="does not match the file name"):
        load_key(tmp_path / "other.key")
    with pytest.raises(KeyFileError, match="invalid key id"):
        new_key(tmp_path, "../evil", "robot")
    with pytest.raises(KeyFileError, match="role"):
        new_key(tmp_path, "x", "root")
    keys, errors = list_keys(tmp_path)
    assert keys == [] and len(errors) == 1


def test_round_trip_and_reply_binding(ring) -> None:
    _, keyring, robot, _ = ring
    gate = Gate(keyring)
    q = np.arange(8, dtype=np.float32)
    req = robot.seal("retrieve", {"m": 3}, {"identity": q})
    assert q.tobytes() not in req.sealed            # encrypted, not just authenticated
    opened = gate.open("retrieve", req, ("robot",))
    assert opened.meta == {"m": 3} and np.array_equal(opened.arrays["identity"], q)
    lat = np.ones((3, 4, 6), np.float32)
    nonce, sealed = gate.seal_reply(opened, {"ok": True}, {"latents": lat})
    meta, arrays = robot.open_reply("retrieve", req, PROTOCOL_VERSION, nonce, sealed)
    assert meta["ok"] and np.array_equal(arrays["latents"], lat)
    other = robot.seal("retrieve", {"m": 3}, {"identity": q})
    with pytest.raises(RefusedError):               # a reply belongs to its own request only
        robot.open_reply("retrieve", other, PROTOCOL_VERSION, nonce, sealed)
    with pytest.raises(RefusedError):
        robot.open_reply("retrieve", req, PROTOCOL_VERSION, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def _tampered(req: SealedRequest, **kw) -> SealedRequest:
    d = {**req.__dict__, **kw}
    return SealedRequest(**d)


def test_every_refusal(ring, tmp_path: Path) -> None:
    _, keyring, robot, admin = ring
    clock = Clock()
    gate = Gate(keyring, max_skew_s=30.0, clock=clock)
    q = {"identity": np.ones(8, np.float32)}

    def reason(req: SealedRequest, op: str = "retrieve", roles: tuple[str, ...] = ("robot",), gate: Gate = gate) -> str:
        with pytest.raises(RefusedError) as exc:
            gate.open(op, req, roles)
        return exc.value.reason

    fresh = robot.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t)
    assert reason(_tampered(fresh, protocol=1)) == "protocol"
    assert reason(_tampered(fresh, key_id="nobody")) == "unknown_key"
    assert reason(_tampered(fresh, key_id="")) == "unknown_key"
    assert reason(_tampered(fresh, stamp_ns=fresh.stamp_ns + 1)) == "bad_tag"       # envelope bound as AD
    flipped = fresh.sealed[:5] + bytes([fresh.sealed[5] ^ 1]) + fresh.sealed[6:]
    assert reason(_tampered(fresh, sealed=flipped)) == "bad_tag"
    assert reason(_tampered(fresh, nonce=b"\0" * 12)) == "bad_tag"
    assert reason(fresh, op="add") == "bad_tag"                                      # operation bound as AD
    wrong = ClientSealer(new_key(tmp_path / "elsewhere", "robot", "robot"))          # same id, other secret
    assert reason(wrong.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t)) == "bad_tag"
    assert reason(robot.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t - 31 * 10**9)) == "stale"
    assert reason(robot.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t + 31 * 10**9)) == "stale"
    assert reason(robot.seal("add", {"count": 1}, stamp_ns=clock.t), op="add", roles=("admin",)) == "role"
    gate.open("retrieve", fresh, ("robot",))
    assert reason(fresh) == "replay"
    # the replay window ends when the timestamp would be stale anyway; nonces are then forgotten
    clock.t += 31 * 10**9
    assert reason(fresh) == "stale"
    assert gate.open("add", admin.seal("add", {"count": 1}, stamp_ns=clock.t), ("admin",)).key.role == "admin"
    assert gate.replay_cache_size() == 1    # only the last nonce: the expired ones were dropped
    # a store restart (a new gate, empty replay cache) still refuses what was stamped before it started
    accepted = robot.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t)
    gate.open("retrieve", accepted, ("robot",))
    clock.t += 10**9
    restarted = Gate(keyring, max_skew_s=30.0, clock=clock)
    assert reason(accepted, gate=restarted) == "stale"
    restarted.open("retrieve", robot.seal("retrieve", {"m": 1}, q, stamp_ns=clock.t), ("robot",))


def test_key_ring_picks_up_revocation_and_new_keys(ring) -> None:
    keys_dir, keyring, robot, _ = ring
    gate = Gate(keyring)
    gate.open("retrieve", robot.seal("retrieve", {}), ("robot",))
    revoke_key(keys_dir, "robot")
    with pytest.raises(RefusedError) as exc:
        gate.open("retrieve", robot.seal("retrieve", {}), ("robot",))
    assert exc.value.reason == "unknown_key"
    new = ClientSealer(new_key(keys_dir, "robot2", "robot"))
    assert gate.open("retrieve", new.seal("retrieve", {}), ("robot",)).key.key_id == "robot2"
    rotated = ClientSealer(new_key(keys_dir, "robot2", "robot", replace=True))      # rotation in place
    with pytest.raises(RefusedError):
        gate.open("retrieve", new.seal("retrieve", {}), ("robot",))
    gate.open("retrieve", rotated.seal("retrieve", {}), ("robot",))
    assert keyring.counts() == {"keys_robot": 1, "keys_admin": 1, "keys_revoked": 1, "keys_unreadable": 0}
    with pytest.raises(ValueError, match="revoked"):
        ClientSealer(load_key(keys_dir / "robot.key"))


def test_payload_parser_is_strict() -> None:
    blob = pack({"a": 1}, {"x": np.arange(3, dtype=np.int64)})
    meta, arrays = unpack(blob)
    assert meta == {"a": 1} and arrays["x"].tolist() == [0, 1, 2]
    head = json.dumps({"meta": {}, "arrays": [["x", "int64", [2**62, 2**62]]]}).encode()
    huge = len(head).to_bytes(4, "little") + head + bytes(8)                 # int64 overflow of the size
    for bad in (b"", blob[:-1], blob + b"\0", b"\xff\xff\xff\xff" + blob[4:], huge):
        with pytest.raises(ValueError):
            unpack(bad)
    with pytest.raises(ValueError, match="dtype"):
        pack({}, {"o": np.array(["x"], dtype=object)})


def test_local_graph_provisions_a_key_pair_once_and_remote_store_gets_a_relay(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from latent_rag_ros.nodes.graph import graph_nodes, provision_local_keys

    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))
    made = provision_local_keys(None)
    keys = tmp_path / "ros_home" / "latent_rag_keys"
    assert sorted(Path(p).name for p in made) == ["admin.key", "robot.key"]
    assert load_key(keys / "robot.key").role == "robot" and load_key(keys / "admin.key").role == "admin"
    before = (keys / "robot.key").read_bytes()
    assert provision_local_keys(None) == [] and (keys / "robot.key").read_bytes() == before   # never replaced
    overrides: dict = {}
    assert "relay_node" not in graph_nodes(True, overrides) and overrides == {}
    assert "relay_node" in graph_nodes(False, overrides) and overrides["link.via_relay"] is True
