"""Damaged store files: a clear StoreCorruptError naming the file, never silently dropped data.

The one thing dropped on purpose is a torn last log record (a crash mid-append, never
acknowledged); the same damage in the middle of the log is an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.store import StoreCorruptError, open_store
from latent_rag_ros.store.faiss_store import FaissStore
from latent_rag_ros.store.wal import FILE_HEADER_SIZE, scan_wal

D, L, C = 8, 2, 4


def _store(path: Path, batches: int = 3, per: int = 4, compact: bool = False, **opts) -> np.ndarray:
    rng = np.random.default_rng(0)
    s = open_store(path, create=True, dim=D, num_ws=L, w_dim=C, **opts)
    for b in range(batches):
        s.add(rng.standard_normal((per, D)), rng.standard_normal((per, L, C)), [f"b{b}"] * per)
    if compact:
        s.compact()
    w = s.get_latents(s.ids())
    s.close()
    return w


def _records(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte ranges of the log records."""
    scan = scan_wal(path / "wal.log", D, L * C * 4)
    starts = [r.offset for r in scan.records]
    return list(zip(starts, [*starts[1:], scan.good_end]))


def _flip(p: Path, pos: int) -> None:
    data = bytearray(p.read_bytes())
    data[pos] ^= 0x5A
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["cut_payload", "cut_header", "zero_tail", "garbled_last"])
def test_torn_last_record_is_dropped(tmp_path: Path, damage: str) -> None:
    w = _store(tmp_path / "s")
    wal = tmp_path / "s" / "wal.log"
    recs = _records(tmp_path / "s")
    start, end = recs[-1]
    data = wal.read_bytes()
    if damage == "cut_payload":
        wal.write_bytes(data[: end - 7])
    elif damage == "cut_header":
        wal.write_bytes(data[: start + 9])
    elif damage == "zero_tail":
        wal.write_bytes(data[:start] + b"\0" * 300)
    else:
        _flip(wal, end - 3)
    s = open_store(tmp_path / "s")
    assert len(s) == 8  # the two complete records
    np.testing.assert_array_equal(s.get_latents(s.ids()), w[:8])
    assert s.verify()["ok"] and wal.stat().st_size == start  # the torn bytes were cut off
    s.add(np.ones((1, D)), np.ones((1, L, C)))
    s.close()
    s = open_store(tmp_path / "s")
    assert len(s) == 9 and s.verify()["ok"]
    s.close()


@pytest.mark.parametrize("where", ["payload", "frame_header"])
def test_bad_record_in_the_middle_is_an_error(tmp_path: Path, where: str) -> None:
    _store(tmp_path / "s")
    start, _ = _records(tmp_path / "s")[0]
    wal = tmp_path / "s" / "wal.log"
    _flip(wal, start + (40 if where == "payload" else 2))
    damaged = wal.read_bytes()
    with pytest.raises(StoreCorruptError, match=r"wal\.log") as err:
        open_store(tmp_path / "s")
    assert err.value.path.endswith("wal.log")
    assert wal.read_bytes() == damaged  # the failed open truncated or rewrote nothing
    with pytest.raises(StoreCorruptError):
        open_store(tmp_path / "s", read_only=True)


@pytest.mark.parametrize(
    "target, damage, needle",
    [
        ("latents", "flip", "sha256"),
        ("vectors", "flip", "sha256"),
        ("ids", "flip", "sha256"),
        ("meta", "flip", "sha256"),
        ("latents", "truncate", "truncated"),
        ("vectors", "truncate", "truncated"),
        ("meta", "delete", "missing"),
        ("tombstones", "flip", "sha256"),
        ("index", "flip", "sha256"),
        ("index", "truncate", "truncated"),
    ],
)
def test_damaged_snapshot_file_is_named(tmp_path: Path, target: str, damage: str, needle: str) -> None:
    root = tmp_path / "s"
    _store(root, batches=20, per=5, compact=False, index={"exact_max": 40})
    s = open_store(root)
    s.remove([1, 2])
    s.compact()
    s.close()
    m = json.loads((root / "manifest.json").read_text())
    assert m["index"] and m["tombstones"]  # an HNSW index file and a tombstone file exist
    rec = m[target] if target in ("index", "tombstones") else m["segments"][0]["files"][target]
    victim = root / rec["name"]
    if damage == "flip":
        _flip(victim, victim.stat().st_size // 2)
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-16])
    else:
        victim.unlink()
    with pytest.raises(StoreCorruptError, match=needle) as err:
        open_store(root)
    assert err.value.path == str(victim)
    if damage == "flip":  # a quick open skips hashing the big arrays; verify() still finds the flip
        try:
            s = open_store(root, verify="size")
        except StoreCorruptError as exc:
            assert exc.path == str(victim) and target not in ("latents", "vectors")
        else:
            report = s.verify()
            assert not report["ok"] and victim.name in " ".join(report["errors"])
            s.close()


def test_damaged_manifest_and_missing_log(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _store(root)
    shutil.copytree(root, tmp_path / "copy")
    (root / "manifest.json").write_text('{"format": "latent_rag_ros.store", "schema_ver')
    with pytest.raises(StoreCorruptError, match=r"manifest\.json.*not valid JSON"):
        open_store(root)
    (tmp_path / "copy" / "wal.log").unlink()
    with pytest.raises(StoreCorruptError, match=r"wal\.log.*missing"):
        open_store(tmp_path / "copy")


def test_interrupted_compaction_recovers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    w = _store(root)
    old_wal = (root / "wal.log").read_bytes()
    s = open_store(root)
    s.compact()
    s.close()
    # crash after the manifest was committed but before the log was reset: the old log's records
    # are already in the snapshot and must not be applied twice
    (root / "wal.log").write_bytes(old_wal)
    # and leftovers of a compaction that died before its commit
    (root / "seg-g000009-s0000000000.ids.i64").write_bytes(b"junk")
    (root / "manifest.json.tmp").write_text("{")
    s = open_store(root)
    assert len(s) == 12
    np.testing.assert_array_equal(s.get_latents(s.ids()), w)
    assert s.verify()["ok"]
    assert (root / "wal.log").stat().st_size == FILE_HEADER_SIZE  # the reset was finished
    assert not (root / "seg-g000009-s0000000000.ids.i64").exists() and not (root / "manifest.json.tmp").exists()
    s.close()


def test_log_from_another_store_is_refused(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    _store(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "wal.log", tmp_path / "b" / "wal.log")
    with pytest.raises(StoreCorruptError, match="another store"):
        FaissStore(tmp_path / "b")
