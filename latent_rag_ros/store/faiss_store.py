"""The embedded vector store: SQLite holds every entry durably; FAISS is a derived in-memory index.

Directory layout::

    store.sqlite (+ -wal, -shm)  the truth: SQLite in WAL mode with ``synchronous=FULL`` and
                                 ``secure_delete=ON``. Tables: ``meta`` (format, dims, latent dtype,
                                 built_with, uuid, sequence number, next id, encryption, key check),
                                 ``entries`` (id, created_at, sealed [label, name]), ``vectors``
                                 (id, sealed float32 vector), ``latents`` (id, sealed W+ code).
    index.snap                   a sealed ``faiss.serialize_index`` snapshot (store/snapshot.py);
                                 derived data, rebuilt from SQLite when missing or stale
    LOCK                         flock'ed by the one process that opens the store for writing

Durability: ``add``/``remove`` return after their SQLite transaction committed (fsync'ed WAL);
the index in memory is updated after the commit. A crash at any point leaves a store that opens
to exactly the acknowledged entries (SQLite's recovery), and the index is caught up on open: a
snapshot is loaded when it matches the store (uuid, key, ids), entries added after it are read
from SQLite and inserted, entries removed after it are filtered and their vectors zeroed. Without
a usable snapshot the index is rebuilt from the vectors table (minutes at 1M entries for HNSW;
the store writes a snapshot on ``compact`` and whenever ``snapshot_min`` new entries arrived).

Erasure: ``remove`` deletes the rows in one transaction (``secure_delete`` zeroes the freed
content), zeroes the entries' vectors in the in-memory index, checkpoints and truncates the
SQLite WAL (old page images) and rewrites the snapshot when it held the entries, so once
``remove`` returns the removed bytes are in no store file (test_store_erasure.py).

Encryption at rest (``key_file``, store/crypto.py): vectors, W+ codes, labels/names and the
snapshot are sealed with AES-256-GCM, each value bound to its store, table and row id. The FAISS
index is not rebuilt from rows on open but loaded from the encrypted snapshot (decrypting costs a
fraction of an HNSW rebuild; bench numbers in docs/NOTES.md). Without a key values carry a
SHA-256 integrity digest (BLAKE2b in stores made before ``meta.digest``). ``created_at``,
ids and counts are not secret.

Integrity: a damaged SQLite file raises :class:`StoreCorruptError` naming ``store.sqlite``; every
value read is checked by its tag/digest (``verify="full"`` on open checks all of them, ``"size"``
only what opening needs); ``verify()`` also runs ``PRAGMA integrity_check``.

Size: this module is ~700 lines on purpose: one class keeps the in-memory slots, the index and
the database consistent under one lock (SQL lives in store/sqlite_db.py, sealing in
store/crypto.py, the snapshot format in store/snapshot.py, the index policy in store/ann.py).

Latent dtype (``latent_dtype``, fixed at creation): ``float32`` (default, exact) or ``float16``
(half the disk; relative error <= 4.9e-4 per value; the identity cost is measured with
``latent-rag bench store --fp16-cost``).

Why one module of ~700 lines: open/recover, add/remove/search, snapshot catch-up and compaction
all hold the same writer lock and sequence number; the SQLite schema (store/sqlite_db.py), the
index choice (store/ann.py) and the snapshot format (store/snapshot.py) are already apart.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.fileio import fsync_dir
from latent_rag_ros.store.ann import IdentityIndex, IndexParams
from latent_rag_ros.store.base import (
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    VectorStore,
    check_dims,
    check_ids,
    check_k,
    normalize_vectors,
    to_latent_dtype,
)
from latent_rag_ros.store.code_cache import CodeCache
from latent_rag_ros.store.crypto import DIGESTS, SealError, codec_for
from latent_rag_ros.store.snapshot import read_snapshot, write_snapshot
from latent_rag_ros.store.sqlite_db import (
    FORMAT,
    SCHEMA_VERSION,
    MissingRowsError,
    StoreDB,
    create_db,
    key_check,
)

LOG = logging.getLogger(__name__)

DB_NAME = "store.sqlite"
SNAP_NAME = "index.snap"
LOCK_NAME = "LOCK"
LEGACY_MANIFEST = "manifest.json"
LATENT_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
CACHED_READ_MAX = 256  # reads of more ids (verify, export, tools) bypass the code cache


class _Grow:
    """A numpy array that grows by doubling (amortised O(1) appends)."""

    def __init__(self, dtype: Any, init: np.ndarray | None = None) -> None:
        base = np.asarray(init if init is not None else np.zeros(0), dtype=dtype)
        self.buf = np.empty(max(16, len(base)), dtype=dtype)
        self.buf[: len(base)] = base
        self.n = len(base)

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.buf.dtype)
        need = self.n + len(values)
        if need > len(self.buf):
            new = np.empty(max(need, 2 * len(self.buf)), dtype=self.buf.dtype)
            new[: self.n] = self.buf[: self.n]
            self.buf = new
        self.buf[self.n: need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.buf[: self.n]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def legacy_error(root: Path) -> StoreError:
    """The error for a directory in the pre-SQLite format (manifest.json, segments, wal.log)."""
    return StoreError(f"{root}: this store uses the old segment/log format (manifest.json), which this version no "
                      "longer reads; rebuild it from its images with `latent-rag build-store --out NEW_DIR` "
                      "(an older latent_rag_ros can still read it)")


class FaissStore(VectorStore):
    """FAISS-indexed store over a SQLite file in a local directory (format in the module docstring)."""

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        dim: int,
        num_ws: int,
        w_dim: int,
        built_with: dict[str, str] | None = None,
        latent_dtype: str = "float32",
        index: dict[str, Any] | None = None,
        key_file: str | os.PathLike | None = None,
        **opts: Any,
    ) -> FaissStore:
        """Create an empty store directory (encrypted when ``key_file`` is given) and open it for writing."""
        dim, num_ws, w_dim = check_dims(dim, num_ws, w_dim)
        params = IndexParams.from_dict(index)
        unknown = sorted(set(opts) - {"read_only", "verify", "snapshot_min", "purge_fraction", "clock",
                                   "latent_cache"})
        if unknown:  # before anything is written
            raise TypeError(f"unknown store option(s) {unknown}")
        if latent_dtype not in LATENT_DTYPES:
            raise ValueError(f"latent_dtype must be one of {sorted(LATENT_DTYPES)}, got {latent_dtype!r}")
        root = Path(path).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        if (root / DB_NAME).exists():
            raise StoreError(f"{root}: a store already exists here")
        if (root / LEGACY_MANIFEST).exists():
            raise legacy_error(root)
        codec = codec_for(key_file, root)
        leftovers = [p.name for p in root.iterdir() if p.name != LOCK_NAME and not p.name.startswith(DB_NAME + ".tmp")]
        if leftovers:
            raise StoreError(f"{root}: directory is not empty and holds no store ({', '.join(sorted(leftovers)[:5])})")
        lock_fd = _lock(root)
        try:
            uuid = str(uuidlib.uuid4())
            meta = {
                "format": FORMAT, "schema_version": SCHEMA_VERSION, "store_uuid": uuid, "created": _now(),
                "dim": dim, "num_ws": num_ws, "w_dim": w_dim, "latent_dtype": latent_dtype, "metric": "cosine",
                "built_with": dict(built_with or {}), "seq": 0, "next_id": 0, "index_params": params.to_dict(),
                "encryption": codec.scheme, "key_id": codec.key_id, "digest": DIGESTS[0],
                "key_check": key_check(codec, uuid),
            }
            create_db(root / DB_NAME, meta)  # the store exists only once it is complete
        finally:
            os.close(lock_fd)
        return cls(root, index=index, key_file=key_file, **opts)

    def __init__(
        self,
        path: str | os.PathLike,
        read_only: bool = False,
        verify: str = "full",
        index: dict[str, Any] | None = None,
        key_file: str | os.PathLike | None = None,
        snapshot_min: int = 20_000,
        purge_fraction: float = 0.2,
        clock: Callable[[], float] = time.time,
        latent_cache: int = 1024,
    ) -> None:
        if verify not in ("full", "size"):
            raise ValueError(f"verify must be 'full' or 'size', got {verify!r}")
        IndexParams.from_dict(index)  # a typo in the caller's options is a ValueError, not a corrupt store
        self.path = Path(path).expanduser()
        self.db_path = self.path / DB_NAME
        self.read_only = bool(read_only)
        self.snapshot_min = int(snapshot_min)
        self.purge_fraction = float(purge_fraction)
        self.clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._broken: BaseException | None = None
        self._lock_fd = -1
        self._db: StoreDB | None = None
        self._cache = CodeCache(int(latent_cache))  # verified float32 W+ codes of hot entries (store/code_cache.py)
        self._db_version = -1
        if not self.db_path.is_file():
            if (self.path / LEGACY_MANIFEST).exists():
                raise legacy_error(self.path)
            raise StoreNotFoundError(f"{self.path}: no store here ({DB_NAME} missing); build one with "
                                     "`latent-rag build-store` or open it with create=True")
        try:
            if not self.read_only:
                self._lock_fd = _lock(self.path)
            self._db = StoreDB(self.db_path, self.read_only)
            with self._db.read_snapshot():  # one read view for the whole load, even while a writer commits
                snap_dead = self._load(verify, index, key_file)
            if not self.read_only:  # finish an erasure a crash interrupted: old page images, stale snapshot
                self._erase_from_disk(rewrite_snapshot=snap_dead)
        except BaseException:
            self.close()
            raise

    def _load(self, verify: str, index_over: dict[str, Any] | None, key_file: str | os.PathLike | None) -> bool:
        """Read meta, entries and the index; True when the snapshot still holds removed entries."""
        db = str(self.db_path)
        assert self._db is not None
        meta = self._db.meta()
        if meta.get("format") != FORMAT:
            raise StoreCorruptError(db, "not a latent_rag_ros store (meta.format missing or wrong)")
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StoreError(f"{db}: store schema version {meta.get('schema_version')} is not supported "
                             f"(this program reads version {SCHEMA_VERSION})")
        try:
            self._dim, self._num_ws, self._w_dim = int(meta["dim"]), int(meta["num_ws"]), int(meta["w_dim"])
            self._dtype = LATENT_DTYPES[meta["latent_dtype"]]
            self._uuid = str(meta["store_uuid"])
            self._seq, self._next_id = int(meta["seq"]), int(meta["next_id"])
            params = IndexParams.from_dict({**(meta.get("index_params") or {}), **(index_over or {})})
            if not (isinstance(meta["encryption"], str) and isinstance(meta["key_id"], str)):
                raise ValueError("encryption/key_id are not strings")
            bytes.fromhex(meta["key_check"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptError(db, f"meta table is missing or has invalid fields ({exc})") from None
        self._meta = meta
        self._codec = self._db.open_codec(meta, key_file, self.path)
        live, labels, names = self._db.entries()
        if len(live) and live[-1] >= self._next_id:
            raise StoreCorruptError(db, f"entry id {live[-1]} is not below meta.next_id {self._next_id}")

        self._index = IdentityIndex(self._dim, params)
        snap = self._load_snapshot(live)
        if snap is None:
            slot_ids, alive = live, np.ones(len(live), bool)
            slot_labels, slot_names = labels, names
            self._add_from_db(live)
            self._snap_slots = 0
        else:
            slot_ids, alive = snap
            pos = np.searchsorted(live, slot_ids[alive])
            slot_labels = [""] * len(slot_ids)
            slot_names = [""] * len(slot_ids)
            for s, p in zip(np.flatnonzero(alive).tolist(), pos.tolist()):
                slot_labels[s], slot_names[s] = labels[p], names[p]
            new = live[live > (slot_ids[-1] if len(slot_ids) else -1)]
            first_new = len(live) - len(new)
            slot_labels += labels[first_new:]
            slot_names += names[first_new:]
            self._snap_slots = len(slot_ids)
            slot_ids = np.concatenate([slot_ids, new])
            alive = np.concatenate([alive, np.ones(len(new), bool)])
            self._index.scrub(np.flatnonzero(~alive))
            self._add_from_db(new, alive)
        self._slot_ids = _Grow(np.int64, slot_ids)
        self._alive = _Grow(np.bool_, alive)
        self._labels, self._names = slot_labels, slot_names
        self._alive_version = 0
        self._n_alive = int(self._alive.view.sum())
        self._name_slot = {nm: i for i, nm in enumerate(self._names) if nm and self._alive.view[i]}
        if verify == "full":
            self._check_rows(live)
        return snap is not None and not snap[1].all()

    def _load_snapshot(self, live: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(slot ids, alive) from a snapshot that matches the store, or None (then the index is rebuilt)."""
        p = self.path / SNAP_NAME
        if not p.exists():
            return None
        try:
            header, slot_ids, body = read_snapshot(p, self._codec, self._uuid)
            if header.get("store_uuid") != self._uuid or header.get("key_id") != self._codec.key_id:
                raise ValueError("written for another store or key")
            if len(slot_ids) != int(header["slots"]) or (len(slot_ids) > 1 and np.any(np.diff(slot_ids) <= 0)):
                raise ValueError("slot ids are not increasing")
            alive = np.isin(slot_ids, live)
            top = slot_ids[-1] if len(slot_ids) else -1
            if np.count_nonzero(live <= top) != int(alive.sum()):
                raise ValueError("the store holds entries the snapshot lacks")
            self._index.from_bytes(body, header, len(slot_ids))
            return slot_ids, alive
        except (SealError, ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
            LOG.warning("%s: index snapshot not used (%s); rebuilding the index from %s", p, exc, DB_NAME)
            self._index = IdentityIndex(self._dim, self._index.params)
            return None

    def _add_from_db(self, ids: np.ndarray, alive: np.ndarray | None = None) -> None:
        """Insert the vectors of ``ids`` (ascending) from SQLite into the index, in batches."""
        step = 50_000
        for s in range(0, len(ids), step):
            chunk = ids[s: s + step]
            vec = self._read_rows("vectors", chunk, np.dtype("<f4"), (self._dim,))
            self._index.add(vec, alive)

    def _read_rows(self, table: str, ids: np.ndarray, dtype: np.dtype, shape: tuple[int, ...],
                   out_dtype: np.dtype | None = None) -> np.ndarray:
        assert self._db is not None
        try:
            return self._db.read_rows(table, ids, dtype, shape, out_dtype)
        except MissingRowsError:
            if self.read_only:  # a writer removed them after this read-only view was opened
                raise ValueError(f"{self.path}: entries were removed since this read-only view was opened; "
                                 "reopen the store") from None
            raise

    def _check_rows(self, live: np.ndarray) -> None:
        """Unseal every vector and latent row (tags/digests) and check both tables cover the entries."""
        for table, dtype, shape in (("vectors", np.dtype("<f4"), (self._dim,)),
                                    ("latents", self._dtype, (self._num_ws, self._w_dim))):
            for s in range(0, len(live), 20_000):
                self._read_rows(table, live[s: s + 20_000], dtype, shape)
            assert self._db is not None
            n = self._db.count(table)
            if n != len(live):
                raise StoreCorruptError(str(self.db_path), f"{table} holds {n} rows for {len(live)} entries")

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_ws(self) -> int:
        return self._num_ws

    @property
    def w_dim(self) -> int:
        return self._w_dim

    @property
    def version(self) -> str:
        return f"{self._uuid}:{self._seq}"

    @property
    def built_with(self) -> dict[str, str]:
        return dict(self._meta.get("built_with") or {})

    @property
    def key_id(self) -> str:
        """Fingerprint of the store key ("" when the store is not encrypted)."""
        return self._codec.key_id

    def __len__(self) -> int:
        return self._n_alive

    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        if self._broken is not None:
            raise StoreError(f"{self.path}: store is in an unknown state after a failure ({self._broken}); reopen it")
        if write and self.read_only:
            raise StoreError(f"{self.path}: store was opened read-only")

    def _lookup(self, ids: Any) -> np.ndarray:
        """Slots of live ids; unknown or removed ids raise ValueError."""
        q = check_ids(ids)
        all_ids = self._slot_ids.view
        pos = np.searchsorted(all_ids, q)
        posc = np.minimum(pos, max(0, len(all_ids) - 1))
        ok = (pos < len(all_ids)) & (all_ids[posc] == q) if len(all_ids) else np.zeros(len(q), bool)
        ok &= self._alive.view[posc] if len(all_ids) else ok
        if not np.all(ok):
            raise ValueError(f"unknown or removed ids: {q[~ok][:10].tolist()}")
        return posc

    # ------------------------------------------------------------------ writes
    def add(
        self,
        vectors: Any,
        latents: Any,
        labels: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Append entries; durable (committed) before it returns."""
        v, w, labels, names = self.check_add(vectors, latents, labels, names)
        n = len(v)
        w_store = to_latent_dtype(w, self._dtype)
        with self._lock:
            self._check_open(write=True)
            for nm in names:
                if nm and nm in self._name_slot:
                    other = int(self._slot_ids.view[self._name_slot[nm]])
                    raise ValueError(f"names: {nm!r} is already in the store (id {other})")
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            assert self._db is not None
            self._db.insert(ids.tolist(), float(self.clock()),
                            [json.dumps([lb, nm]).encode() for lb, nm in zip(labels, names)], v, w_store,
                            {"seq": self._seq + 1, "next_id": int(ids[-1]) + 1})
            self._next_id = int(ids[-1]) + 1
            try:
                first = self._slot_ids.n
                self._slot_ids.extend(ids)
                self._alive.extend(np.ones(n, bool))
                self._labels.extend(labels)
                self._names.extend(names)
                self._index.add(v, self._alive.view)
                self._n_alive += n
                self._alive_version += 1
                for i, nm in enumerate(names):
                    if nm:
                        self._name_slot[nm] = first + i
                self._seq += 1
            except BaseException as exc:
                self._broken = exc
                raise StoreError(f"{self.path}: entries were committed but not indexed ({exc}); reopen the store") \
                    from exc
            self._maybe_snapshot()
            return ids.copy()

    def remove(self, ids: Any) -> None:
        """Delete entries by id and erase their bytes from every store file; durable before it returns."""
        with self._lock:
            self._check_open(write=True)
            q = np.unique(check_ids(ids))
            if len(q) == 0:
                return
            slots = self._lookup(q)
            self._cache.drop(q.tolist())  # no copy of a removed code stays in memory
            assert self._db is not None
            self._db.delete([int(i) for i in q], {"seq": self._seq + 1})
            self._seq += 1
            self._alive.view[slots] = False
            self._index.scrub(slots)
            self._n_alive -= len(slots)
            self._alive_version += 1
            for s in slots.tolist():
                self._name_slot.pop(self._names[s], None)
                self._labels[s] = self._names[s] = ""
            covered = bool(np.any(slots < self._snap_slots))
            dead = self._slot_ids.n - self._n_alive
            if dead > self.purge_fraction * max(1, self._slot_ids.n) and dead > 0:
                self.compact(purge=True)
            else:
                self._erase_from_disk(rewrite_snapshot=covered)

    def expire(self, max_age_s: float, now: float | None = None) -> np.ndarray:
        """Remove (as :meth:`remove` does) every entry added more than ``max_age_s`` seconds ago; returns their ids."""
        if not max_age_s or max_age_s <= 0:
            return np.zeros(0, np.int64)
        with self._lock:
            self._check_open(write=True)
            cutoff = (self.clock() if now is None else now) - float(max_age_s)
            assert self._db is not None
            old = self._db.ids_older_than(cutoff)
            if len(old):
                self.remove(old)
            return old

    def created_at(self, ids: Any) -> np.ndarray:
        """When the given ids were added (seconds since the epoch of the store's clock)."""
        with self._lock:
            self._check_open()
            q = self._slot_ids.view[self._lookup(ids)]
            assert self._db is not None
            got = self._db.created_at(q.tolist())
            return np.asarray([got[int(i)] for i in q], dtype=np.float64)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it (old page images gone); False when readers block it."""
        assert self._db is not None
        try:
            clean = self._db.checkpoint()
        except StoreError as exc:  # e.g. a full disk: committed data is safe in the WAL; retried next time
            LOG.error("%s: WAL checkpoint failed (%s); removed bytes may stay in %s-wal until one succeeds",
                      self.db_path, exc, DB_NAME)
            return False
        if not clean:
            LOG.warning("%s: a reader blocks the WAL checkpoint; removed bytes stay in %s-wal until the next one",
                        self.db_path, DB_NAME)
        return clean

    def _erase_from_disk(self, rewrite_snapshot: bool) -> None:
        self._checkpoint()
        if rewrite_snapshot:
            self._write_snapshot()

    # ------------------------------------------------------------------ snapshot, compaction, rekey
    def _write_snapshot(self) -> None:
        """Write the index snapshot (HNSW only; a flat index is rebuilt on open) or delete a stale one."""
        p = self.path / SNAP_NAME
        if self._index.kind != "hnsw":
            p.unlink(missing_ok=True)
            self._snap_slots = 0
            return
        header = {"store_uuid": self._uuid, "seq": self._seq, "key_id": self._codec.key_id,
                  "slots": self._slot_ids.n, **self._index.state()}
        write_snapshot(p, self._codec, self._uuid, header, self._slot_ids.view, self._index.to_bytes())
        self._snap_slots = self._slot_ids.n

    def _maybe_snapshot(self) -> None:
        """Snapshot when many entries are not in the last one; a failure is logged (SQLite has the data)."""
        fresh = self._slot_ids.n - self._snap_slots
        if self._index.kind == "hnsw" and fresh >= max(self.snapshot_min, self._snap_slots // 4):
            try:
                self._write_snapshot()
            except Exception as exc:  # noqa: BLE001 - the triggering add is already durable
                LOG.error("%s: index snapshot failed: %s", self.path, exc)

    def compact(self, purge: bool | None = None) -> dict[str, Any]:
        """Snapshot the index and truncate the SQLite WAL; with ``purge`` (or many removed) also drop
        removed slots from the index and VACUUM the database. Returns a summary."""
        with self._lock:
            self._check_open(write=True)
            n = self._slot_ids.n
            dead = n - self._n_alive
            if purge is None:
                purge = dead > 0 and dead > self.purge_fraction * max(1, n)
            if purge and dead:
                keep = np.flatnonzero(self._alive.view)
                new_index = IdentityIndex(self._dim, self._index.params)
                alive_new = np.ones(len(keep), bool)
                for s in range(0, len(keep), 100_000):
                    new_index.add(self._index.reconstruct(keep[s: s + 100_000]), alive_new)
                self._slot_ids = _Grow(np.int64, self._slot_ids.view[keep])
                self._alive = _Grow(np.bool_, alive_new)
                self._labels = [self._labels[s] for s in keep]
                self._names = [self._names[s] for s in keep]
                self._name_slot = {nm: i for i, nm in enumerate(self._names) if nm}
                self._index = new_index
                self._alive_version += 1
            self._write_snapshot()
            assert self._db is not None
            vacuumed = False
            if purge:
                self._db.vacuum()
                vacuumed = True
            clean = self._checkpoint()
            return {"purged": int(dead) if purge else 0, "slots": self._slot_ids.n, "snapshot": self._snap_slots > 0,
                    "vacuumed": vacuumed, "wal_truncated": clean}

    def rekey(self, new_key_file: str | os.PathLike | None) -> dict[str, Any]:
        """Re-seal every row under a new key (None: decrypt) in one transaction; crash-safe.

        The old snapshot is deleted first, so after a crash at any point the store holds either the
        old key's rows or the new key's rows (SQLite's atomic commit) and a snapshot of neither.
        """
        with self._lock:
            self._check_open(write=True)
            new = codec_for(new_key_file, self.path)
            self._cache.clear()
            (self.path / SNAP_NAME).unlink(missing_ok=True)
            fsync_dir(self.path)
            self._snap_slots = 0
            assert self._db is not None
            count = self._db.reseal_all(new)
            upd = {"encryption": new.scheme, "key_id": new.key_id}
            old_id = self._codec.key_id
            self._codec = new
            self._meta.update(upd)
            self._checkpoint()
            self._write_snapshot()
            return {"old_key_id": old_id, "new_key_id": new.key_id, "encryption": new.scheme, "rows": count}

    # ------------------------------------------------------------------ reads
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k (exact up to ``exact_max`` entries, HNSW above; see store/ann.py)."""
        k = check_k(k)
        q = normalize_vectors(queries, self._dim, "queries")
        with self._lock:
            self._check_open()
            scores, slots = self._index.search(q, k, self._alive.view, self._n_alive, self._alive_version)
            ids = np.full(slots.shape, -1, dtype=np.int64)
            hit = slots >= 0
            ids[hit] = self._slot_ids.view[slots[hit]]
        return scores, ids

    def get_latents(self, ids: Any) -> np.ndarray:
        """W+ codes (float32) of live ids; hot codes come from the cache of verified codes, the rest from SQLite."""
        shape = (self._num_ws, self._w_dim)
        with self._lock:
            self._check_open()
            q = self._slot_ids.view[self._lookup(ids)]
            cache = self._cache
            if not cache.capacity or len(q) > CACHED_READ_MAX:
                return self._read_rows("latents", q, self._dtype, shape, np.dtype(np.float32))
            self._sync_cache()
            out = np.empty((len(q), *shape), dtype=np.float32)
            miss: list[int] = []
            for j, id_ in enumerate(q.tolist()):
                code = cache.get(id_)
                if code is None:
                    miss.append(j)
                else:
                    out[j] = code
            if miss:
                got = self._read_rows("latents", q[miss], self._dtype, shape, np.dtype(np.float32))
                if len(miss) == len(q):
                    out = got
                else:
                    out[miss] = got
                for id_, code in dict(zip(q[miss].tolist(), got)).items():  # once per id, even when repeated
                    cache.put(id_, code)  # float32, as served: a hit is a plain copy
            return out

    def _sync_cache(self) -> None:
        """Empty the code cache when another connection committed (e.g. a writer removed entries
        this read-only view cached); a writer's own changes invalidate it directly."""
        assert self._db is not None
        version = self._db.data_version()
        if version != self._db_version:
            self._cache.clear()
            self._db_version = version

    def get_vectors(self, ids: Any) -> np.ndarray:
        with self._lock:
            self._check_open()
            return self._index.reconstruct(self._lookup(ids))

    def get_labels(self, ids: Any) -> list[str]:
        with self._lock:
            self._check_open()
            return [self._labels[s] for s in self._lookup(ids)]

    def get_names(self, ids: Any) -> list[str]:
        with self._lock:
            self._check_open()
            return [self._names[s] for s in self._lookup(ids)]

    def names(self) -> set[str]:
        with self._lock:
            self._check_open()
            return set(self._name_slot)

    def ids(self) -> np.ndarray:
        """Every live id, ascending."""
        with self._lock:
            self._check_open()
            return self._slot_ids.view[self._alive.view].copy()

    def ids_with_label(self, label: str) -> np.ndarray:
        """Live ids whose label is ``label`` (erasure of one person)."""
        with self._lock:
            self._check_open()
            return np.asarray([int(self._slot_ids.view[s]) for s, lb in enumerate(self._labels)
                               if lb == label and self._alive.view[s]], dtype=np.int64)

    # ------------------------------------------------------------------ reports
    def _file_sizes(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            m = self._meta
            return {
                "backend": "faiss", "path": str(self.path), "size": self._n_alive, "slots": self._slot_ids.n,
                "removed_pending_purge": self._slot_ids.n - self._n_alive, "dim": self._dim,
                "num_ws": self._num_ws, "w_dim": self._w_dim, "latent_dtype": m["latent_dtype"],
                "index": self._index.describe(), "version": self.version, "built_with": self.built_with,
                "store_uuid": self._uuid, "created": m["created"], "encryption": self._codec.scheme,
                "key_id": self._codec.key_id, "snapshot_slots": self._snap_slots,
                "unsnapshotted": self._slot_ids.n - self._snap_slots if self._index.kind == "hnsw" else 0,
                "files": self._file_sizes(), "read_only": self.read_only, "latent_cache": self._cache.stats(),
            }

    def verify(self) -> dict[str, Any]:
        """SQLite integrity check, every row's tag/digest, table agreement and the snapshot."""
        with self._lock:
            self._check_open()
            errors: list[str] = []
            files: dict[str, str] = {}
            assert self._db is not None
            try:
                res = self._db.integrity()
                if res != ["ok"]:
                    raise StoreCorruptError(str(self.db_path), "; ".join(res[:5]))
                with self._db.read_snapshot():
                    live = self._db.entries()[0]
                    self._check_rows(live)
                if not self.read_only and not np.array_equal(live, self._slot_ids.view[self._alive.view]):
                    errors.append(f"{self.db_path}: entries differ from the entries in memory")
                files[DB_NAME] = "ok"
            except StoreCorruptError as exc:
                files[DB_NAME] = exc.reason
                errors.append(str(exc))
            snap = self.path / SNAP_NAME
            if snap.exists():
                try:
                    header, _, _ = read_snapshot(snap, self._codec, self._uuid)
                    if header.get("store_uuid") != self._uuid or header.get("key_id") != self._codec.key_id:
                        raise ValueError("written for another store or key")
                    files[SNAP_NAME] = "ok"
                except (SealError, ValueError, KeyError, OSError) as exc:
                    files[SNAP_NAME] = str(exc)
                    errors.append(f"{snap}: {exc} (derived data: `latent-rag store compact` rewrites it)")
            if self._index.ntotal != self._slot_ids.n:
                errors.append(f"index holds {self._index.ntotal} vectors for {self._slot_ids.n} slots")
            return {"ok": not errors, "path": str(self.path), "size": self._n_alive, "version": self.version,
                    "files": files, "errors": errors}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def __del__(self) -> None:  # best effort; callers should close()
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _lock(root: Path) -> int:
    """Take the store's writer lock (flock on LOCK); a second writer gets a clear StoreError."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{root}: store is open for writing by another process (open it with "
                         "read_only=True to read)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
