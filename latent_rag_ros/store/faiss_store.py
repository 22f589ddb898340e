"""The embedded vector store: a directory of checksummed snapshot segments plus a write-ahead log.

Directory layout::

    manifest.json   schema version, dims, latent dtype, built_with, uuid, sequence number,
                    and the snapshot: segments, tombstones and index files with sha256 + size
    wal.log         append-only log of adds/removes since the snapshot (see store/wal.py)
    LOCK            flock'ed by the one process that opens the store for writing
    seg-g<gen>-s<first slot>.{ids.i64,vectors.f32,latents.f32|latents.f16,meta.json}
    tomb-g<gen>.i64 ids removed but still present in the segments
    index-g<gen>.faiss  the HNSW graph (only when the index is HNSW; see store/ann.py)

Durability: ``add``/``remove`` return after their log record is fsync'ed. ``compact()`` (run
automatically when the log passes ``compact_wal_bytes``, default 256 MiB) moves logged entries
into a new segment, writes each new file atomically (tmp, fsync, rename, fsync dir), then the
manifest, then an empty log, then deletes files the manifest no longer names. A crash at any
point leaves a store that opens to exactly the acknowledged entries: log records already in the
snapshot are recognised by their sequence number and skipped.

Opening verifies every snapshot file (size and sha256; ``verify="size"`` skips hashing the two
big raw arrays, vectors and latents, for very large stores that are then checked with ``store
verify``; ids, labels, tombstones and the index file are always hashed, so FAISS never parses a
damaged file) and replays the log; a torn last record is dropped, anything else wrong raises
:class:`StoreCorruptError` naming the file.

Memory: identity vectors live in the FAISS index (RAM, as FAISS needs them); W+ codes are read
on demand from memory-mapped segment files (or, for entries not yet compacted, from the log by
offset), so a store of 1M codes of 14x512 needs their 14 GiB (fp16) on disk, not in RAM. The
HNSW index is saved with its checksum when it covers <90% of the slots saved, so opening a
large store does not rebuild the graph; flat indexes are rebuilt from the vectors on open.

Latent dtype (``latent_dtype``, fixed at creation): ``float32`` (default, exact) or ``float16``
(half the disk and page cache). float16 keeps 11 significant bits (relative error <= 4.9e-4 per
value). Measured: on N(0, 2) codes of 14x512 the mean relative L2 error is 2.1e-4 and the largest
absolute error 0.0039 (|w| up to 9.5); with the project's random-weight StyleGAN3-T (64x32) and
the real MobileNetV2 re-ID, images from float16 codes differ by at most 1.1e-4 per pixel and the
re-ID cosine to the float32 images is 1.0000 (min 0.99999994 over 16 codes). For trained models
``latent-rag bench store --fp16-cost --config FILE`` measures the same with the configured models.

Removed entries are tombstoned; ``compact`` purges them (renumbering slots and rebuilding the
index) once they exceed ``purge_fraction`` (default 0.2) of the slots, or when asked.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.store import wal as walmod
from latent_rag_ros.store.ann import IdentityIndex, IndexParams
from latent_rag_ros.store.base import (
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    VectorStore,
    check_dims,
    check_ids,
    check_k,
    check_latents,
    check_texts,
    first_duplicate,
    normalize_vectors,
    to_latent_dtype,
)
from latent_rag_ros.store.files import (
    array_chunks,
    atomic_write,
    atomic_write_json,
    check_file,
    read_json,
)

LOG = logging.getLogger(__name__)

FORMAT = "latent_rag_ros.store"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WAL_NAME = "wal.log"
LOCK_NAME = "LOCK"
LATENT_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_OWN_PREFIXES = ("seg-", "tomb-", "index-")


@dataclass
class _Segment:
    first: int
    count: int
    rec: dict[str, Any]
    latents: np.ndarray


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


class FaissStore(VectorStore):
    """FAISS-indexed store in a local directory (see the module docstring for the format)."""

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
        **opts: Any,
    ) -> FaissStore:
        """Create an empty store directory and open it for writing."""
        dim, num_ws, w_dim = check_dims(dim, num_ws, w_dim)
        params = IndexParams.from_dict(index)
        if latent_dtype not in LATENT_DTYPES:
            raise ValueError(f"latent_dtype must be one of {sorted(LATENT_DTYPES)}, got {latent_dtype!r}")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        if (root / MANIFEST).exists():
            raise StoreError(f"{root}: a store already exists here")
        leftovers = [p.name for p in root.iterdir()
                     if p.name not in (LOCK_NAME, WAL_NAME) and not p.name.endswith(".tmp")]
        if leftovers:
            raise StoreError(f"{root}: directory is not empty and holds no store ({', '.join(sorted(leftovers)[:5])})")
        lock_fd = _lock(root)
        try:
            store_uuid = str(uuidlib.uuid4())
            walmod.create_wal(root / WAL_NAME, store_uuid, 0)
            manifest = {
                "format": FORMAT, "schema_version": SCHEMA_VERSION, "store_uuid": store_uuid,
                "created": _now(), "updated": _now(), "dim": dim, "num_ws": num_ws, "w_dim": w_dim,
                "latent_dtype": latent_dtype, "metric": "cosine", "built_with": dict(built_with or {}),
                "generation": 0, "seq": 0, "next_id": 0, "slots": 0, "segments": [], "tombstones": None,
                "index": None, "index_params": params.to_dict(),
            }
            atomic_write_json(root / MANIFEST, manifest)
        finally:
            os.close(lock_fd)
        return cls(root, index=index, **opts)

    def __init__(
        self,
        path: str | os.PathLike,
        read_only: bool = False,
        verify: str = "full",
        index: dict[str, Any] | None = None,
        compact_wal_bytes: int = 256 << 20,
        purge_fraction: float = 0.2,
        max_segments: int = 16,
    ) -> None:
        if verify not in ("full", "size"):
            raise ValueError(f"verify must be 'full' or 'size', got {verify!r}")
        IndexParams.from_dict(index)  # a typo in the caller's options is a ValueError, not a corrupt store
        self.path = Path(path)
        self.read_only = bool(read_only)
        self.compact_wal_bytes = int(compact_wal_bytes)
        self.purge_fraction = float(purge_fraction)
        self.max_segments = max(1, int(max_segments))
        self._lock = threading.RLock()
        self._closed = False
        self._broken: BaseException | None = None
        self._lock_fd = -1
        self._wal: walmod.WalWriter | None = None
        self._wal_rfd = -1
        if not (self.path / MANIFEST).is_file():
            raise StoreNotFoundError(f"{self.path}: no store here (manifest.json missing); create it with create=True")
        if not self.read_only:
            self._lock_fd = _lock(self.path)
        attempts = 1 if not self.read_only else 10
        for attempt in range(attempts):
            before = (self.path / MANIFEST).read_bytes()
            try:
                try:
                    self._load(verify, index)
                except FileNotFoundError as exc:
                    raise StoreCorruptError(str(exc.filename), "file vanished while the store was opened") from None
                break
            except StoreCorruptError:
                # a reader racing a writer's compaction sees files vanish: retry on the new manifest
                changed = (self.path / MANIFEST).read_bytes() != before
                self._release_files()
                if not changed or attempt == attempts - 1:
                    self.close()
                    raise
                time.sleep(0.01 * (attempt + 1))
            except BaseException:
                self.close()
                raise

    def _load(self, verify: str, index_over: dict[str, Any] | None) -> None:
        m = read_json(self.path / MANIFEST, "store manifest")
        mpath = str(self.path / MANIFEST)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise StoreCorruptError(mpath, "not a latent_rag_ros store manifest")
        if int(m.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StoreError(f"{mpath}: store schema version {m.get('schema_version')} is not supported "
                             f"(this program reads version {SCHEMA_VERSION})")
        try:
            self._dim, self._num_ws, self._w_dim = int(m["dim"]), int(m["num_ws"]), int(m["w_dim"])
            self._dtype = LATENT_DTYPES[m["latent_dtype"]]
            self._uuid = str(m["store_uuid"])
            self._manifest = m
            full = verify == "full"
            params = IndexParams.from_dict({**(m.get("index_params") or {}), **(index_over or {})})
            self._row_bytes = self._num_ws * self._w_dim * self._dtype.itemsize

            ids, labels, names, segments, seg_vectors = [], [], [], [], []
            for seg in m["segments"]:
                segments.append(self._open_segment(seg, full))
                f = seg["files"]
                ids.append(np.fromfile(check_file(self.path, f["ids"], "segment ids"), dtype="<i8"))
                if len(ids[-1]) > 1 and np.any(np.diff(ids[-1]) <= 0):
                    raise StoreCorruptError(str(self.path / f["ids"]["name"]), "segment ids are not increasing")
                check_file(self.path, f["vectors"], "segment vectors", full)
                if int(f["vectors"]["bytes"]) != int(seg["count"]) * 4 * self._dim:
                    raise StoreCorruptError(str(self.path / f["vectors"]["name"]), "vector file size does not "
                                            "match count x dim")
                seg_vectors.append((seg, f["vectors"]))
                meta = read_json(check_file(self.path, f["meta"], "segment labels"), "segment labels")
                labels.extend(str(x[0]) for x in meta)
                names.extend(str(x[1]) for x in meta)
                if len(meta) != seg["count"] or len(ids[-1]) != seg["count"]:
                    raise StoreCorruptError(str(self.path / f["meta"]["name"]),
                                            "segment files disagree on the entry count")
            all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            self._slot_ids = _Grow(np.int64, all_ids)
            self._alive = _Grow(np.bool_, np.ones(len(all_ids), bool))
            self._labels, self._names = labels, names
            self._segments = segments
            self._seg_starts = [s.first for s in segments]
            self._wal_first = len(all_ids)
            self._wal_off = _Grow(np.int64)
            self._seq = int(m["seq"])
            self._next_id = int(m["next_id"])
            if len(all_ids) != int(m["slots"]) or (len(all_ids) and (np.any(np.diff(all_ids) <= 0)
                                                                      or all_ids[-1] >= self._next_id)):
                raise StoreCorruptError(mpath, "segment ids are not the increasing ids the manifest describes")
            tomb = m.get("tombstones")
            if tomb:
                dead = np.fromfile(check_file(self.path, tomb, "tombstones"), dtype="<i8")
                pos = np.searchsorted(all_ids, dead)
                if np.any(pos >= len(all_ids)) or np.any(all_ids[np.minimum(pos, len(all_ids) - 1)] != dead):
                    raise StoreCorruptError(str(self.path / tomb["name"]), "tombstones name ids not in the segments")
                self._alive.view[pos] = False
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptError(mpath, f"manifest is missing or has invalid fields ({exc})") from None

        # index: saved HNSW graph (checksummed) + vectors it does not cover, or rebuilt from vectors
        self._index = IdentityIndex(self._dim, params)
        irec = m.get("index")
        covered = 0
        if irec and not self._index.gpu:  # always hashed: FAISS must never parse a damaged file
            self._index.load(check_file(self.path, irec, "index"), irec)
            covered = int(irec["slots"])
        for seg, vrec in seg_vectors:
            if seg["first_slot"] + seg["count"] <= covered:
                continue
            vec = np.memmap(self.path / vrec["name"], dtype="<f4", mode="r", shape=(seg["count"], self._dim))
            for s in range(max(0, covered - seg["first_slot"]), seg["count"], 100_000):
                self._index.add(np.array(vec[s: s + 100_000]), self._alive.view)
            del vec
        self._replay(full)
        self._alive_version = 0
        self._n_alive = int(self._alive.view.sum())
        self._name_slot = {nm: i for i, nm in enumerate(self._names) if nm and self._alive.view[i]}

    def _open_segment(self, seg: dict[str, Any], full: bool) -> _Segment:
        rec = seg["files"]["latents"]
        p = check_file(self.path, rec, "segment latents", full)
        count = int(seg["count"])
        if int(rec["bytes"]) != count * self._row_bytes:
            raise StoreCorruptError(str(p), "latent file size does not match count x num_ws x w_dim")
        lat = np.memmap(p, dtype=self._dtype, mode="r", shape=(count, self._num_ws, self._w_dim)) if count else \
            np.zeros((0, self._num_ws, self._w_dim), self._dtype)
        return _Segment(int(seg["first_slot"]), count, seg, lat)

    def _replay(self, full: bool) -> None:
        wal_path = self.path / WAL_NAME
        try:  # scan and later reads use this one descriptor, even if a writer replaces the file
            self._wal_rfd = os.open(wal_path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreCorruptError(str(wal_path), "write-ahead log is missing (acknowledged entries may be lost)") \
                from None
        scan = walmod.scan_wal(wal_path, self._dim, self._row_bytes, fd=self._wal_rfd)
        if scan.store_uuid != self._uuid:
            raise StoreCorruptError(str(wal_path), "write-ahead log belongs to another store (uuid differs)")
        if scan.base_seq > self._seq:
            raise StoreCorruptError(str(wal_path), f"log follows snapshot {scan.base_seq} but the manifest holds "
                                    f"{self._seq} (manifest.json is older than the log)")
        if scan.torn_bytes:
            LOG.warning("%s: dropping a torn last record (%d bytes, never acknowledged)", wal_path, scan.torn_bytes)
        pending: list[np.ndarray] = []
        stale = 0
        for rec in scan.records:
            if rec.seq <= self._seq:
                stale += 1
                continue
            if rec.seq != self._seq + 1:
                raise StoreCorruptError(str(wal_path), f"record at byte {rec.offset} has sequence {rec.seq}, "
                                        f"expected {self._seq + 1} (records missing)")
            if rec.kind == walmod.ADD:
                if len(rec.ids) == 0 or rec.ids[0] < self._next_id or np.any(np.diff(rec.ids) <= 0):
                    raise StoreCorruptError(str(wal_path), f"add record at byte {rec.offset} reuses ids")
                pending.append(rec.vectors)
                self._append_slots(rec.ids, rec.labels, rec.names, rec.latent_offset)
            else:
                slots = self._lookup(rec.ids, str(wal_path))
                self._alive.view[slots] = False
            self._seq = rec.seq
        if pending:
            self._index.add(np.concatenate(pending), self._alive.view)
        if not self.read_only:
            if stale and stale == len(scan.records):  # crash between manifest and log reset: finish it
                walmod.create_wal(wal_path, self._uuid, self._seq)
                os.close(self._wal_rfd)
                self._wal_rfd = os.open(wal_path, os.O_RDONLY)
                self._wal = walmod.WalWriter(wal_path, walmod.FILE_HEADER_SIZE)
            else:
                self._wal = walmod.WalWriter(wal_path, scan.good_end)
            self._remove_orphans()

    def _append_slots(self, ids: np.ndarray, labels: list[str], names: list[str], lat_offset: int) -> None:
        n = len(ids)
        self._slot_ids.extend(ids)
        self._alive.extend(np.ones(n, bool))
        self._labels.extend(labels)
        self._names.extend(names)
        self._wal_off.extend(lat_offset + np.arange(n, dtype=np.int64) * self._row_bytes)
        self._next_id = int(ids[-1]) + 1

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
        return dict(self._manifest.get("built_with") or {})

    @property
    def latent_dtype(self) -> str:
        """``float32`` or ``float16``: how W+ codes are kept on disk."""
        return str(self._manifest["latent_dtype"])

    def __len__(self) -> int:
        return self._n_alive

    # ------------------------------------------------------------------ helpers
    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        if self._broken is not None:
            raise StoreError(f"{self.path}: store must be reopened after an internal error ({self._broken})")
        if write and self.read_only:
            raise StoreError(f"{self.path}: store was opened read-only")

    def _lookup(self, ids: Any, where: str | None = None) -> np.ndarray:
        """Slots of live ids; unknown or removed ids raise ValueError (StoreCorruptError in replay)."""
        q = check_ids(ids)
        all_ids = self._slot_ids.view
        pos = np.searchsorted(all_ids, q)
        ok = pos < len(all_ids)
        ok[ok] = all_ids[pos[ok]] == q[ok]
        ok[ok] = self._alive.view[pos[ok]]
        if not np.all(ok):
            bad = q[~ok][:5].tolist()
            if where:
                raise StoreCorruptError(where, f"remove record names ids not in the store: {bad}")
            raise ValueError(f"unknown or removed store ids: {bad}")
        return pos

    def _read_latents_raw(self, slots: np.ndarray) -> np.ndarray:
        """W+ codes of ``slots`` in the store dtype, from segment memmaps or the log."""
        out = np.empty((len(slots), self._num_ws, self._w_dim), dtype=self._dtype)
        in_seg = slots < self._wal_first
        if np.any(in_seg):
            which = np.searchsorted(self._seg_starts, slots[in_seg], side="right") - 1
            pos = np.flatnonzero(in_seg)
            for si in np.unique(which):
                seg = self._segments[si]
                sel = which == si
                out[pos[sel]] = seg.latents[slots[in_seg][sel] - seg.first]
        for i in np.flatnonzero(~in_seg):
            off = int(self._wal_off.view[slots[i] - self._wal_first])
            buf = os.pread(self._wal_rfd, self._row_bytes, off)
            if len(buf) != self._row_bytes:
                raise StoreCorruptError(str(self.path / WAL_NAME), f"log shorter than a recorded entry (byte {off})")
            out[i] = np.frombuffer(buf, dtype=self._dtype).reshape(self._num_ws, self._w_dim)
        return out

    # ------------------------------------------------------------------ API
    def add(
        self,
        vectors: Any,
        latents: Any,
        labels: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Append entries; returns their ids after the log record is fsync'ed."""
        v = normalize_vectors(vectors, self._dim)
        n = len(v)
        w = check_latents(latents, n, self._num_ws, self._w_dim)
        w_store = to_latent_dtype(w, self._dtype)
        labels = check_texts(labels, n, "labels")
        names = check_texts(names, n, "names")
        dup = first_duplicate(names)
        if dup is not None:
            raise ValueError(f"names: {dup!r} appears twice in one add")
        with self._lock:
            self._check_open(write=True)
            for nm in names:
                if nm and nm in self._name_slot:
                    other = int(self._slot_ids.view[self._name_slot[nm]])
                    raise ValueError(f"names: {nm!r} is already in the store (id {other})")
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            seq = self._seq + 1
            assert self._wal is not None
            offset = self._wal.append(walmod.encode_add(seq, ids, v, w_store, labels, names))
            try:
                first = self._slot_ids.n
                self._append_slots(ids, labels, names, walmod.add_latent_offset(offset, n, self._dim))
                self._index.add(v, self._alive.view)
                self._n_alive += n
                self._alive_version += 1
                for i, nm in enumerate(names):
                    if nm:
                        self._name_slot[nm] = first + i
                self._seq = seq
            except BaseException as exc:
                self._broken = exc
                raise StoreError(f"{self.path}: entries were logged but not applied ({exc}); reopen the store") from exc
            self._maybe_compact()
            return ids.copy()

    def remove(self, ids: Any) -> None:
        """Tombstone entries by id; durable before it returns."""
        with self._lock:
            self._check_open(write=True)
            q = np.unique(check_ids(ids))
            if len(q) == 0:
                return
            slots = self._lookup(q)
            seq = self._seq + 1
            assert self._wal is not None
            self._wal.append(walmod.encode_remove(seq, q))
            self._alive.view[slots] = False
            self._n_alive -= len(slots)
            self._alive_version += 1
            for s in slots:
                self._name_slot.pop(self._names[s], None)
            self._seq = seq
            self._maybe_compact()

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
        with self._lock:
            self._check_open()
            return self._read_latents_raw(self._lookup(ids)).astype(np.float32)

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

    # ------------------------------------------------------------------ compaction
    def _maybe_compact(self) -> None:
        """Compact when the log is large; a failure is logged, never lost data (the log still holds it)."""
        if self._wal is not None and self._wal.size > self.compact_wal_bytes:
            try:
                self.compact()
            except Exception as exc:  # noqa: BLE001 - the triggering add/remove is already durable
                LOG.error("%s: automatic compaction failed: %s", self.path, exc)

    def compact(self, purge: bool | None = None) -> dict[str, Any]:
        """Fold the log into the snapshot atomically; purge removed entries when ``purge`` or too many.

        Returns a summary (generation, segments, purged entries, whether the index was saved).
        """
        with self._lock:
            self._check_open(write=True)
            n = self._slot_ids.n
            dead = n - self._n_alive
            if purge is None:
                purge = dead > 0 and dead > self.purge_fraction * max(1, n)
            gen = int(self._manifest["generation"]) + 1
            wrote: list[str] = []
            new_index = self._index
            if purge:
                keep = np.flatnonzero(self._alive.view)
                segs = [self._write_segment(gen, keep, 0)] if len(keep) else []
                new_index = IdentityIndex(self._dim, self._index.params)
                alive_new = np.ones(len(keep), bool)
                for s in range(0, len(keep), 100_000):
                    new_index.add(self._index.reconstruct(keep[s: s + 100_000]), alive_new)
                slots_total = len(keep)
            else:
                segs = [s.rec for s in self._segments]
                if len(segs) + (n > self._wal_first) > self.max_segments:
                    segs = [self._write_segment(gen, np.arange(n), 0)]
                elif n > self._wal_first:
                    segs.append(self._write_segment(gen, np.arange(self._wal_first, n), self._wal_first))
                slots_total = n
            wrote += [f["name"] for s in segs for f in s["files"].values()]
            alive_after = np.ones(slots_total, bool) if purge else self._alive.view
            dead_ids = self._slot_ids.view[~alive_after] if not purge else np.zeros(0, np.int64)
            tomb = None
            if len(dead_ids):
                tomb = atomic_write(self.path / f"tomb-g{gen:06d}.i64",
                                    [np.ascontiguousarray(dead_ids, "<i8").tobytes()])
                tomb["count"] = len(dead_ids)
            irec = self._manifest.get("index")
            saved = False
            if new_index.kind == "hnsw" and (purge or not irec or int(irec["slots"]) < 0.9 * slots_total
                                             or int(irec.get("ef_search", 0)) != new_index.ef_search):
                irec = new_index.save(self.path / f"index-g{gen:06d}.faiss")
                saved = True
            elif new_index.kind != "hnsw":
                irec = None
            m = dict(self._manifest)
            m.update(generation=gen, seq=self._seq, next_id=self._next_id, slots=slots_total, segments=segs,
                     tombstones=tomb, index=irec, index_params=new_index.params.to_dict(), updated=_now())
            atomic_write_json(self.path / MANIFEST, m)          # commit point
            try:
                walmod.create_wal(self.path / WAL_NAME, self._uuid, self._seq)
                self._switch_to(m, purge, new_index)
            except BaseException as exc:  # snapshot committed, memory not switched: only a reopen is safe
                self._broken = exc
                raise StoreError(f"{self.path}: compaction committed but could not switch over ({exc}); "
                                 "reopen the store") from exc
            self._remove_orphans()
            return {"generation": gen, "segments": len(segs), "purged": int(dead) if purge else 0,
                    "index_saved": saved, "slots": slots_total}

    def _write_segment(self, gen: int, slots: np.ndarray, first: int) -> dict[str, Any]:
        stem = f"seg-g{gen:06d}-s{first:010d}"
        step = 4096
        ext = "f32" if self._dtype.itemsize == 4 else "f16"
        files = {
            "ids": atomic_write(self.path / f"{stem}.ids.i64",
                                [np.ascontiguousarray(self._slot_ids.view[slots], "<i8").tobytes()]),
            "vectors": atomic_write(self.path / f"{stem}.vectors.f32",
                                    (memoryview(self._index.reconstruct(slots[s: s + step])).cast("B")
                                     for s in range(0, len(slots), step))),
            "latents": atomic_write(self.path / f"{stem}.latents.{ext}",
                                    (c for s in range(0, len(slots), step)
                                     for c in array_chunks(self._read_latents_raw(slots[s: s + step])))),
            "meta": atomic_write_json(self.path / f"{stem}.meta.json",
                                      [[self._labels[s], self._names[s]] for s in slots]),
        }
        return {"first_slot": int(first), "count": len(slots), "files": files}

    def _switch_to(self, m: dict[str, Any], purged: bool, new_index: IdentityIndex) -> None:
        """Point the in-memory state at the snapshot just committed and the fresh log."""
        if purged:
            keep = np.flatnonzero(self._alive.view)
            self._slot_ids = _Grow(np.int64, self._slot_ids.view[keep])
            self._alive = _Grow(np.bool_, np.ones(len(keep), bool))
            self._labels = [self._labels[s] for s in keep]
            self._names = [self._names[s] for s in keep]
            self._name_slot = {nm: i for i, nm in enumerate(self._names) if nm}
            self._index = new_index
            self._alive_version += 1
        self._manifest = m
        self._segments = [self._open_segment(s, False) for s in m["segments"]]
        self._seg_starts = [s.first for s in self._segments]
        self._wal_first = self._slot_ids.n
        self._wal_off = _Grow(np.int64)
        if self._wal is not None:
            self._wal.close()
        os.close(self._wal_rfd)
        wal_path = self.path / WAL_NAME
        self._wal_rfd = os.open(wal_path, os.O_RDONLY)
        self._wal = walmod.WalWriter(wal_path, walmod.FILE_HEADER_SIZE)

    def _remove_orphans(self) -> None:
        """Delete snapshot files of older generations (and temp files) the manifest does not name."""
        keep = {f["name"] for s in self._manifest["segments"] for f in s["files"].values()}
        for key in ("tombstones", "index"):
            if self._manifest.get(key):
                keep.add(self._manifest[key]["name"])
        for p in self.path.iterdir():
            if p.name in keep:
                continue
            if p.name.startswith(_OWN_PREFIXES) or p.name.endswith(".tmp"):
                try:
                    p.unlink()
                except OSError as exc:  # not fatal: the file is unreferenced
                    LOG.warning("could not delete old store file %s: %s", p, exc)

    # ------------------------------------------------------------------ reports
    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            m = self._manifest
            return {
                "backend": "faiss", "path": str(self.path), "size": self._n_alive, "slots": self._slot_ids.n,
                "removed_pending_purge": self._slot_ids.n - self._n_alive, "dim": self._dim,
                "num_ws": self._num_ws, "w_dim": self._w_dim, "latent_dtype": m["latent_dtype"],
                "index": self._index.describe(), "version": self.version, "built_with": self.built_with,
                "store_uuid": self._uuid, "created": m["created"], "generation": m["generation"],
                "segments": len(self._segments), "wal_bytes": self._wal.size if self._wal else None,
                "wal_entries": self._slot_ids.n - self._wal_first, "read_only": self.read_only,
            }

    def verify(self) -> dict[str, Any]:
        """Re-hash every snapshot file, re-check every log record, and cross-check the counts."""
        with self._lock:
            self._check_open()
            m = self._manifest
            errors: list[str] = []
            files: dict[str, str] = {}
            recs = [(f, f"segment {k}") for s in m["segments"] for k, f in s["files"].items()]
            recs += [(m[k], k) for k in ("tombstones", "index") if m.get(k)]
            for rec, what in recs:
                try:
                    check_file(self.path, rec, what, True)
                    files[rec["name"]] = "ok"
                except StoreCorruptError as exc:
                    files[rec["name"]] = exc.reason
                    errors.append(str(exc))
            wal_info: dict[str, Any] = {}
            try:
                scan = walmod.scan_wal(self.path / WAL_NAME, self._dim, self._row_bytes)
                live = [r for r in scan.records if r.seq > int(m["seq"])]
                wal_info = {"records": len(live), "bytes": scan.size, "torn_tail_bytes": scan.torn_bytes}
                logged = sum(len(r.ids) for r in live if r.kind == walmod.ADD)
                if not self.read_only and logged != self._slot_ids.n - self._wal_first:
                    errors.append(f"{self.path / WAL_NAME}: log holds {logged} entries, store has "
                                  f"{self._slot_ids.n - self._wal_first} since the snapshot")
                if scan.torn_bytes and not self.read_only:
                    errors.append(f"{self.path / WAL_NAME}: {scan.torn_bytes} unexpected bytes after the last record")
            except StoreCorruptError as exc:
                errors.append(str(exc))
            if self._index.ntotal != self._slot_ids.n:
                errors.append(f"index holds {self._index.ntotal} vectors for {self._slot_ids.n} slots")
            ids = self._slot_ids.view
            if len(ids) > 1 and np.any(np.diff(ids) <= 0):
                errors.append("store ids are not strictly increasing")
            return {"ok": not errors, "path": str(self.path), "size": self._n_alive, "version": self.version,
                    "files": files, "wal": wal_info, "errors": errors}

    def _release_files(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._wal_rfd >= 0:
            os.close(self._wal_rfd)
            self._wal_rfd = -1
        self._segments = []

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release_files()
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

