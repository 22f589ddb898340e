"""Encryption at rest (issue 15.2): no plaintext on disk, no key no data, wrong key one clear error, rekey."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.cli.store import register
from latent_rag_ros.store import StoreError, open_store
from latent_rag_ros.store.crypto import generate_key_file
from latent_rag_ros.store.faiss_store import FaissStore

D, L, C = 48, 2, 8
LABEL = "alice-7f3e-secret-label"


def _key(tmp_path: Path, name: str) -> Path:
    (tmp_path / "keys").mkdir(exist_ok=True)
    p = tmp_path / "keys" / name
    generate_key_file(p)
    assert (p.stat().st_mode & 0o777) == 0o600
    return p


def _data(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), rng.standard_normal((n, L, C)).astype(np.float32)


def _make(root: Path, key: Path | None, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    v, w = _data(n)
    s = FaissStore.create(root, D, L, C, index={"exact_max": 100}, key_file=key)
    s.add(v, w, [LABEL] * n, [f"{LABEL}-{i}.png" for i in range(n)])
    s.compact()  # HNSW snapshot written (sealed with the key)
    s.close()
    return v, w


def _disk(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.iterdir()) if p.is_file())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, sub.add_parser("bench").add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_nothing_personal_is_on_disk_in_clear(tmp_path: Path) -> None:
    key = _key(tmp_path, "k1")
    v, w = _make(tmp_path / "enc", key)
    _make(tmp_path / "plain", None)
    enc, plain = _disk(tmp_path / "enc"), _disk(tmp_path / "plain")
    with FaissStore(tmp_path / "plain", read_only=True) as p:
        stored = p.get_vectors([0, 7, 399])  # exactly the bytes a store keeps (normalised float32)
    for j, i in enumerate((0, 7, 399)):
        for needle in (stored[j].tobytes(), w[i].tobytes()):
            assert needle in plain  # the same scan finds them in an unencrypted store
            assert needle not in enc
    assert LABEL.encode() in plain and LABEL.encode() not in enc
    s = FaissStore(tmp_path / "enc", key_file=key)  # and the key opens it: same answers as the plain store
    p = FaissStore(tmp_path / "plain")
    assert s.stats()["encryption"] == "aes-256-gcm" and s.stats()["index"]["kind"] == "hnsw"
    np.testing.assert_array_equal(s.get_latents([3, 9]), w[[3, 9]])
    assert s.get_labels([5]) == [LABEL] and s.verify()["ok"]
    np.testing.assert_array_equal(s.search(v[:30], 10)[1], p.search(v[:30], 10)[1])
    s.close()
    p.close()


def test_copied_store_without_key_is_unreadable_and_wrong_key_is_one_error(tmp_path: Path) -> None:
    key, other = _key(tmp_path, "k1"), _key(tmp_path, "k2")
    _make(tmp_path / "s", key)
    shutil.copytree(tmp_path / "s", tmp_path / "stolen")
    with pytest.raises(StoreError, match=r"encrypted \(key id [0-9a-f]{16}\); give its key file"):
        open_store(tmp_path / "stolen")
    with pytest.raises(StoreError, match=r"wrong key: .*k2 has key id") as err:
        open_store(tmp_path / "stolen", key_file=other)
    assert "\n" not in str(err.value)
    # reading the database directly yields only ciphertext that no other key opens
    con = sqlite3.connect(tmp_path / "stolen" / "store.sqlite")
    blobs = [r[0] for r in con.execute("SELECT info FROM entries LIMIT 5")]
    con.close()
    assert all(LABEL.encode() not in b for b in blobs)
    assert _cli(["store", "stats", str(tmp_path / "stolen")]) == 1
    assert _cli(["store", "stats", str(tmp_path / "stolen"), "--key-file", str(key)]) == 0


def test_key_file_rules(tmp_path: Path) -> None:
    key = _key(tmp_path, "k1")
    os.chmod(key, 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        FaissStore.create(tmp_path / "a", D, L, C, key_file=key)
    (tmp_path / "b").mkdir()
    inside = tmp_path / "b" / "store.key"
    generate_key_file(inside)
    with pytest.raises(StoreError, match="inside the store directory"):
        FaissStore.create(tmp_path / "b", D, L, C, key_file=inside)
    with pytest.raises(StoreError, match="key file not found"):
        FaissStore.create(tmp_path / "c", D, L, C, key_file=tmp_path / "nokey")
    with pytest.raises(FileExistsError):
        generate_key_file(key)  # never overwritten
    bad = tmp_path / "keys" / "bad"
    bad.write_text("00" * 10)
    os.chmod(bad, 0o600)
    with pytest.raises(StoreError, match="not a store key file"):
        FaissStore.create(tmp_path / "d", D, L, C, key_file=bad)
    _make(tmp_path / "plain", None, n=10)
    os.chmod(key, 0o600)
    with pytest.raises(StoreError, match="not encrypted"):
        FaissStore(tmp_path / "plain", key_file=key)


def test_rekey_rotates_and_an_interrupted_rekey_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    k1, k2, k3 = _key(tmp_path, "k1"), _key(tmp_path, "k2"), _key(tmp_path, "k3")
    v, w = _make(tmp_path / "s", k1)
    before = _disk(tmp_path / "s")
    # a failure in the middle of re-sealing (injected: the AEAD of the new key raises after 500
    # rows, standing in for a crash) rolls the single transaction back: the old key still opens all
    s = FaissStore(tmp_path / "s", key_file=k1)
    from latent_rag_ros.store import crypto

    calls = {"n": 0}
    real = crypto.AeadCodec.seal

    def failing(self, aad: bytes, data: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] > 500:
            raise OSError("injected failure during rekey")
        return real(self, aad, data)

    monkeypatch.setattr(crypto.AeadCodec, "seal", failing)
    with pytest.raises(OSError, match="injected"):
        s.rekey(k2)
    monkeypatch.undo()
    s.close()
    s = FaissStore(tmp_path / "s", key_file=k1)
    np.testing.assert_array_equal(s.get_latents(np.arange(400)), w)
    out = s.rekey(k2)
    assert out["rows"] == 3 * 400 and out["new_key_id"] != out["old_key_id"]
    s.close()
    with pytest.raises(StoreError, match="wrong key"):
        FaissStore(tmp_path / "s", key_file=k1)
    assert _cli(["store", "rekey", str(tmp_path / "s"), "--key-file", str(k2), "--new-key-file", str(k3)]) == 0
    s = FaissStore(tmp_path / "s", key_file=k3)
    np.testing.assert_array_equal(s.get_latents(np.arange(400)), w)
    assert s.get_labels([0]) == [LABEL] and s.verify()["ok"]
    _, got = s.search(v[:10], 1)
    assert got[:, 0].tolist() == list(range(10))
    s.close()
    after = _disk(tmp_path / "s")
    assert after != before and LABEL.encode() not in after
