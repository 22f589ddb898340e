"""The FAISS index behind the embedded store: exact for small stores, HNSW for large ones.

Policy (parameters in :class:`IndexParams`, all recorded in the store manifest):

- up to ``exact_max`` entries (default 10 000): ``IndexFlatIP``, exact. Measured here (2 cores,
  512-d): one query costs ~0.15 ms at 5k, ~1.5 ms at 20k, ~6 ms at 50k, ~15 ms at 100k, so exact
  search stops meeting the 1 ms target a little above 10k entries.
- above it: ``IndexHNSWFlat`` (inner product, ``M=32``, ``efConstruction=40``). HNSW needs no
  training, grows by plain ``add`` (the store adds every acknowledged entry at once), and keeps an
  exact flat copy of the vectors (``storage``) that serves exact searches and ``reconstruct``.
  ``efSearch`` is tuned when the index is built or has doubled: the smallest value in
  ``EF_CANDIDATES`` whose recall@10 against exact search reaches ``recall_target`` (default
  0.95) on 256 probe queries placed like unseen images around stored entries (see ``tune``).
  IVF was measured and rejected as the default: on 1M clustered 512-d vectors whose
  within-identity spread is high-dimensional, IVF-Flat (2048 or 4096 lists) reached only 0.60
  recall@10 at nprobe 64 where HNSW holds >= 0.95 (HNSW at 100k: recall 0.984 at efSearch 64).
- ``k > approx_max_k`` (default 256), or an HNSW answer with fewer results than asked (heavily
  filtered graph): exact search on the flat storage, so any ``k`` up to ``len(store)`` is correct.
- removed entries stay in the index until the store purges them and are filtered at search time
  with an ``IDSelectorBitmap``.
- batches of fewer than ``parallel_min_batch`` (default 16) queries are searched on one OpenMP
  thread: measured on this 2-core machine while other processes kept it busy, one exact query
  over 10k vectors took 40 ms p50 with 2 threads (threads waiting for each other) and 1 ms with one.
- with ``faiss.get_num_gpus() > 0`` (faiss-gpu builds) and ``use_gpu``: an exact
  ``GpuIndexFlatIP`` at every size (brute force on a GPU beats HNSW up to millions of entries);
  removed entries are filtered by over-fetching. Not exercised here: only faiss-cpu exists on
  this project's machines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

LOG = logging.getLogger(__name__)
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass
class IndexParams:
    """Index policy knobs (documented in the module docstring)."""

    exact_max: int = 10_000
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 0            # 0 = tune to ``recall_target``
    recall_target: float = 0.95
    approx_max_k: int = 256
    parallel_min_batch: int = 16
    use_gpu: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IndexParams:
        """Build from a (possibly partial) dict; an unknown key raises ValueError naming it."""
        d = d or {}
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown index option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)


class IdentityIndex:
    """Cosine (inner product on normalised vectors) index over store slots 0..ntotal-1."""

    def __init__(self, dim: int, params: IndexParams) -> None:
        self.dim = dim
        self.params = params
        self.gpu = bool(params.use_gpu and _num_gpus() > 0)
        self.index = self._new_flat()
        self.kind = "flat-gpu" if self.gpu else "flat"
        self.tuned_at = 0
        self.tuned_recall = float("nan")
        self._sel_key: tuple[int, int] | None = None
        self._sel: tuple[Any, np.ndarray] | None = None

    # ------------------------------------------------------------------ construction
    def _new_flat(self) -> Any:
        if self.gpu:  # pragma: no cover - needs faiss-gpu and a GPU
            res = faiss.StandardGpuResources()
            return faiss.GpuIndexFlatIP(res, self.dim)
        return faiss.IndexFlatIP(self.dim)

    def _new_hnsw(self) -> faiss.IndexHNSWFlat:
        idx = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = self.params.ef_construction
        return idx

    @property
    def ntotal(self) -> int:
        """Number of slots in the index (live and removed)."""
        return int(self.index.ntotal)

    @property
    def ef_search(self) -> int:
        """Current HNSW efSearch (0 for exact indexes)."""
        return int(self.index.hnsw.efSearch) if self.kind == "hnsw" else 0

    def add(self, vectors: np.ndarray, alive: np.ndarray | None = None) -> None:
        """Append normalised vectors as the next slots; switches to HNSW past ``exact_max``."""
        if len(vectors) == 0:
            return
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if self.kind == "flat" and self.ntotal > self.params.exact_max:
            self._to_hnsw(alive)
        elif self.kind == "hnsw" and self.ntotal >= 2 * max(self.tuned_at, 1) and not self.params.ef_search:
            self.tune(alive)

    def _to_hnsw(self, alive: np.ndarray | None) -> None:
        flat = self.index
        hnsw = self._new_hnsw()
        step = 100_000
        for s in range(0, flat.ntotal, step):
            hnsw.add(flat.reconstruct_n(s, min(step, flat.ntotal - s)))
        self.index = hnsw
        self.kind = "hnsw"
        LOG.info("store index switched to HNSW at %d entries", self.ntotal)
        if self.params.ef_search:
            hnsw.hnsw.efSearch = self.params.ef_search
        else:
            self.tune(alive)

    def tune(self, alive: np.ndarray | None, queries: int = 256, seed: int = 0) -> float:
        """Pick the smallest efSearch whose recall@10 on probe queries reaches ``recall_target``.

        Probe queries stand in for unseen images: for a sampled entry ``x`` with nearest other
        entry at cosine ``s``, the probe is ``s * x + sqrt(1 - s^2) * u`` (``u`` a random unit
        vector orthogonal to ``x``), i.e. as far from ``x`` as its nearest neighbour, in a random
        direction. Measured on clustered 512-d data this is harder than new samples of stored
        identities (at 50k: probe recall 0.96 where new samples reach 1.0), so the choice is safe.
        """
        if self.kind != "hnsw":
            return 1.0
        n = self.ntotal
        live = np.flatnonzero(alive[:n]) if alive is not None else np.arange(n)
        if len(live) < 12:
            return 1.0
        rng = np.random.default_rng(seed)
        qs = np.sort(rng.choice(live, size=min(queries, len(live)), replace=False))
        x = self.index.reconstruct_batch(qs)
        sel = _bitmap_selector(alive, n) if alive is not None and len(live) < n else None
        exact = self._storage()
        near, _ = exact.search(x, 2, params=_flat_params(sel))
        s = np.clip(near[:, 1:2], -1.0, 1.0)
        u = rng.standard_normal(x.shape).astype(np.float32)
        u -= (u * x).sum(axis=1, keepdims=True) * x
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        probe = np.ascontiguousarray(s * x + np.sqrt(1.0 - s**2) * u, dtype=np.float32)
        _, gt = exact.search(probe, 10, params=_flat_params(sel))
        truth = [set(row.tolist()) for row in gt]
        recall = 0.0
        for ef in EF_CANDIDATES:
            p = faiss.SearchParametersHNSW(efSearch=ef, sel=sel[0] if sel else None)
            _, got = self.index.search(probe, 10, params=p)
            recall = float(np.mean([len(set(a.tolist()) & b) / 10 for a, b in zip(got, truth)]))
            if recall >= self.params.recall_target:
                break
        self.index.hnsw.efSearch = ef
        self.tuned_at = n
        self.tuned_recall = recall
        if recall < self.params.recall_target:
            LOG.warning("HNSW recall target %.2f not reached on %d entries (efSearch=%d gives %.3f on probe "
                        "queries): raise hnsw_m/ef_construction or lower exact_max", self.params.recall_target,
                        n, ef, recall)
        else:
            LOG.info("HNSW efSearch=%d gives recall@10=%.3f on %d entries", ef, recall, n)
        return recall

    def _storage(self) -> Any:
        return faiss.downcast_index(self.index.storage) if self.kind == "hnsw" else self.index

    # ------------------------------------------------------------------ queries
    def search(
        self, q: np.ndarray, k: int, alive: np.ndarray, n_alive: int, alive_version: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` slots among live ones: (scores [B,k], slots [B,k], -1 padded).

        ``alive_version`` identifies the state of ``alive`` (the store bumps it on every change) so
        the removed-entry filter is built once per change, not once per query.
        """
        b = q.shape[0]
        scores = np.full((b, k), -math.inf, dtype=np.float32)
        slots = np.full((b, k), -1, dtype=np.int64)
        kk = min(k, n_alive)
        if kk == 0:
            return scores, slots
        n = self.ntotal
        dead = n - n_alive
        if self.gpu:  # pragma: no cover - needs faiss-gpu and a GPU
            d, i = self.index.search(q, min(n, kk + dead))
            for r in range(b):
                keep = i[r][(i[r] >= 0) & alive[np.maximum(i[r], 0)]][:kk]
                slots[r, : len(keep)] = keep
                scores[r, : len(keep)] = d[r][: len(keep)] if dead == 0 else self._dots(q[r], keep)
            return scores, slots
        sel = self._selector(alive, n, alive_version) if dead else None
        with _threads(1 if b < self.params.parallel_min_batch else 0):
            d, i = self._search_cpu(q, kk, sel)
        scores[:, :kk] = d
        slots[:, :kk] = i
        scores[slots < 0] = -math.inf
        return scores, slots

    def _search_cpu(self, q: np.ndarray, kk: int, sel: tuple[Any, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw" and kk <= self.params.approx_max_k:
            p = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, kk), sel=sel[0] if sel else None)
            d, i = self.index.search(q, kk, params=p)
            short = np.flatnonzero((i >= 0).sum(axis=1) < kk)
            if len(short):  # graph search found too few live entries: answer these rows exactly
                d[short], i[short] = self._storage().search(q[short], kk, params=_flat_params(sel))
        else:
            d, i = self._storage().search(q, kk, params=_flat_params(sel))
        return d, i

    def _selector(self, alive: np.ndarray, n: int, version: int) -> tuple[Any, np.ndarray]:
        key = (version, n)
        if version < 0 or self._sel is None or self._sel_key != key:
            self._sel = _bitmap_selector(alive, n)
            self._sel_key = key
        return self._sel

    def _dots(self, qv: np.ndarray, slots: np.ndarray) -> np.ndarray:  # pragma: no cover - GPU only
        return self.reconstruct(slots) @ qv

    def reconstruct(self, slots: np.ndarray) -> np.ndarray:
        """Stored vectors of the given slots ``[k, D]``."""
        if len(slots) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64)), np.float32)

    def range_vectors(self, start: int, stop: int) -> np.ndarray:
        """Vectors of slots ``start..stop-1``."""
        return np.asarray(self.index.reconstruct_n(start, stop - start), np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> dict[str, Any]:
        """Write an HNSW index (tmp, fsync, rename); returns its manifest record with sha256."""
        from latent_rag_ros.store.files import fsync_dir, sha256_file

        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        rec = {"name": path.name, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size,
               "slots": self.ntotal, "kind": self.kind, "ef_search": self.ef_search, "tuned_at": self.tuned_at,
               "tuned_recall": None if math.isnan(self.tuned_recall) else round(self.tuned_recall, 4)}
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return rec

    def load(self, path: Path, rec: dict[str, Any]) -> None:
        """Load an index file whose checksum the caller has verified."""
        idx = faiss.read_index(str(path))
        if not isinstance(idx, faiss.IndexHNSWFlat) or idx.d != self.dim or idx.ntotal != int(rec["slots"]):
            from latent_rag_ros.store.base import StoreCorruptError

            raise StoreCorruptError(str(path), f"index file does not hold an HNSW index of {rec['slots']} "
                                    f"{self.dim}-d vectors")
        self.index = idx
        self.kind = "hnsw"
        self.gpu = False
        self.index.hnsw.efSearch = int(rec.get("ef_search") or self.params.ef_search or 64)
        self.tuned_at = int(rec.get("tuned_at", idx.ntotal))
        self.tuned_recall = float(rec.get("tuned_recall") or "nan")

    def describe(self) -> dict[str, Any]:
        """Index kind and its live parameters, for ``stats``."""
        d: dict[str, Any] = {"kind": self.kind, "slots": self.ntotal, "exact_max": self.params.exact_max,
                             "approx_max_k": self.params.approx_max_k}
        if self.kind == "hnsw":
            d.update(M=self.params.hnsw_m, ef_construction=self.params.ef_construction,
                     ef_search=self.ef_search, recall_target=self.params.recall_target, tuned_at=self.tuned_at,
                     probe_recall=None if math.isnan(self.tuned_recall) else round(self.tuned_recall, 4))
        return d


def _num_gpus() -> int:
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run FAISS calls inside with ``n`` OpenMP threads (0 = leave the setting alone)."""
    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _flat_params(sel: tuple[Any, np.ndarray] | None) -> Any:
    return faiss.SearchParameters(sel=sel[0]) if sel else None


def _bitmap_selector(alive: np.ndarray, n: int) -> tuple[Any, np.ndarray]:
    """IDSelectorBitmap over slots 0..n-1 (returned with the bitmap it points into, to keep it alive)."""
    bits = np.packbits(alive[:n].astype(np.uint8), bitorder="little")
    return faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)), bits
