"""Damaged store files: a clear StoreCorruptError naming the file, never silently dropped data.

SQLite is the truth: damage to ``store.sqlite`` (a changed value, a truncated or foreign file, a
row moved to another id) is an error naming it. The index snapshot is derived data: a damaged one
is reported by ``verify`` and rebuilt from SQLite, with nothing lost.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.store import StoreCorruptError, StoreError, open_store
from latent_rag_ros.store.faiss_store import FaissStore

D, L, C = 8, 2, 4


def _store(path: Path, n: int = 12, **opts) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, D)).astype(np.float32)
    w = rng.standard_normal((n, L, C)).astype(np.float32)
    s = open_store(path, create=True, dim=D, num_ws=L, w_dim=C, **opts)
    for b in range(0, n, 4):
        s.add(v[b: b + 4], w[b: b + 4], [f"b{b}"] * len(v[b: b + 4]))
    s.close()  # the last connection checkpoints the WAL into store.sqlite
    return v, w


def _flip_at(p: Path, needle: bytes) -> None:
    data = bytearray(p.read_bytes())
    pos = data.find(needle)
    assert pos >= 0, "value not found in the file"
    data[pos + 1] ^= 0x5A
    p.write_bytes(bytes(data))


def test_changed_value_is_named_on_open_and_by_verify(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _, w = _store(root)
    db = root / "store.sqlite"
    _flip_at(db, w[5].tobytes())
    with pytest.raises(StoreCorruptError, match=r"latents row 5") as err:
        open_store(root)  # verify="full" checks every row's digest on open
    assert err.value.path == str(db)
    s = open_store(root, verify="size")  # a quick open reads only what it needs
    report = s.verify()
    assert not report["ok"] and "latents row 5" in " ".join(report["errors"])
    np.testing.assert_array_equal(s.get_latents([4, 6]), w[[4, 6]])  # the other rows still read
    with pytest.raises(StoreCorruptError, match="latents row 5"):
        s.get_latents([5])
    s.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "zero_header"])
def test_damaged_database_file_is_named(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "s"
    _store(root, n=400)
    db = root / "store.sqlite"
    data = db.read_bytes()
    if damage == "truncate":
        db.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        db.write_bytes(b"\0" * 100 + data[100:])
    with pytest.raises(StoreCorruptError) as err:
        open_store(root)
    assert err.value.path == str(db)
    assert str(db) in str(err.value)


def test_row_moved_to_another_id_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _store(root)
    con = sqlite3.connect(root / "store.sqlite")
    (blob,) = con.execute("SELECT w FROM latents WHERE id=1").fetchone()
    con.execute("UPDATE latents SET w=? WHERE id=2", (blob,))  # a valid value, in the wrong row
    con.commit()
    con.close()
    with pytest.raises(StoreCorruptError, match="latents row 2"):
        open_store(root)


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_damaged_snapshot_is_reported_and_rebuilt(tmp_path: Path, damage: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "s"
    rng = np.random.default_rng(1)
    v = rng.standard_normal((300, D)).astype(np.float32)
    s = FaissStore.create(root, D, L, C, index={"exact_max": 50})
    s.add(v, np.zeros((300, L, C), np.float32))
    s.compact()
    s.close()
    snap = root / "index.snap"
    data = bytearray(snap.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x5A
        snap.write_bytes(bytes(data))
    elif damage == "truncate":
        snap.write_bytes(bytes(data[:-40]))
    else:
        FaissStore.create(tmp_path / "o", D, L, C, index={"exact_max": 50}).close()
        o = FaissStore(tmp_path / "o")
        o.add(v, np.zeros((300, L, C), np.float32))
        o.compact()
        o.close()
        snap.write_bytes((tmp_path / "o" / "index.snap").read_bytes())
    with caplog.at_level(logging.WARNING):
        s = FaissStore(root, read_only=True)
    assert "index.snap" in caplog.text and "rebuilding" in caplog.text
    assert len(s) == 300
    _, got = s.search(v[:20], 1)
    assert got[:, 0].tolist() == list(range(20))
    report = s.verify()
    assert not report["ok"] and "index.snap" in " ".join(report["errors"])
    s.close()
    s = FaissStore(root)
    s.compact()  # rewrites the derived snapshot
    assert s.verify()["ok"]
    s.close()


def test_old_format_store_gets_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    (root / "manifest.json").write_text('{"format": "latent_rag_ros.store", "schema_version": 1}')
    (root / "wal.log").write_bytes(b"LRRWAL")
    for opener in (lambda: open_store(root), lambda: open_store(root, create=True, dim=D, num_ws=L, w_dim=C)):
        with pytest.raises(StoreError, match=r"old segment/log format.*build-store"):
            opener()


def test_store_made_before_meta_digest_keeps_blake2b_and_detects_damage(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """New stores seal with SHA-256 (meta.digest); a store without meta.digest was sealed with BLAKE2b."""
    from latent_rag_ros.store import crypto, faiss_store

    root = tmp_path / "s"
    _, w = _store(root)
    con = sqlite3.connect(root / "store.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key='digest'").fetchone() == ('"sha256"',)
    con.close()
    old = tmp_path / "old"  # the same data sealed the way stores were before meta.digest existed
    monkeypatch.setattr(faiss_store, "codec_for", lambda key_file, root=None: crypto.PlainCodec("blake2b"))
    monkeypatch.setattr(faiss_store, "DIGESTS", ("blake2b",))
    _, w_old = _store(old)
    monkeypatch.undo()
    con = sqlite3.connect(old / "store.sqlite")
    con.execute("DELETE FROM meta WHERE key='digest'")
    con.commit()
    con.close()
    s = FaissStore(old)  # verify="full": every BLAKE2b digest checks
    assert s.verify()["ok"]
    np.testing.assert_array_equal(s.get_latents([1, 2]), w_old[[1, 2]])
    s.close()
    _flip_at(old / "store.sqlite", w_old[3].tobytes())
    with pytest.raises(StoreCorruptError, match="latents row 3"):
        FaissStore(old)
    _flip_at(root / "store.sqlite", w[3].tobytes())  # and the SHA-256 store detects the same damage
    with pytest.raises(StoreCorruptError, match="latents row 3"):
        FaissStore(root)
