"""The FAISS index behind the embedded store: exact for small stores, HNSW for large ones.

Policy (parameters in :class:`IndexParams`, all recorded in the store manifest):

- up to ``exact_max`` entries (default 5 000): ``IndexFlatIP``, exact. Measured here (2 cores,
  512-d, one thread): one query costs ~0.15 ms at 5k (the vectors fit in cache), 0.7-1.0 ms at 10k,
  ~1.5 ms at 20k, ~6 ms at 50k, so exact search leaves no margin under the 1 ms target past ~5k.
- above it: ``IndexHNSWFlat`` (inner product, ``M=32``, ``efConstruction=40``). HNSW needs no
  training, grows by plain ``add`` (the store adds every acknowledged entry at once), and keeps an
  exact flat copy of the vectors (``storage``) that serves exact searches and ``reconstruct``.
  ``efSearch`` is tuned when the graph is built and whenever a batch of >= 512 vectors brings it
  to twice the size of the last tuning: the smallest value in ``EF_CANDIDATES`` whose recall@10
  against exact search reaches ``recall_target`` (default 0.95) on the batch's last 256 vectors,
  searched before they are inserted (real unseen samples; see ``tune``). A store grown only by
  small adds keeps the efSearch of its last tuning; ``ef_search`` fixes it by hand. Measured on
  1M ``structured`` bench vectors (2 cores, one query): efSearch 48 / 64 / 96 / 128 / 192 give
  recall@10 0.959 / 0.968 / 0.978 / 0.981 / 0.988 at p50 0.75 / 0.89 / 1.33 / 1.71 / 2.46 ms; the
  held-out estimate ran slightly below the recall of new queries (0.973 vs 0.988 at 192).
  Why HNSW rather than IVF: no training (IVF's k-means must be redone as the store grows),
  cheap incremental adds, and the flat storage for exact answers. On the bench's worst-case
  ``isotropic`` data (store/bench.py) the two were close at 100k (IVF-1024 nprobe 32: recall@10
  0.955 at 0.43 ms; HNSW efSearch 32: 0.958 at 0.41 ms) and both failed at 1M (IVF-2048
  nprobe 64: 0.60 at 6.6 ms; HNSW efSearch 512: 0.79 at 7.6 ms): data without low-dimensional
  structure defeats every partition or graph. On the ``structured`` data calibrated to real CNN
  person embeddings HNSW reaches >= 0.98 (numbers in the store's bench report).
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

LOG = logging.getLogger(__name__)
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HOLDOUT = 256


@dataclass
class IndexParams:
    """Index policy knobs (documented in the module docstring)."""

    exact_max: int = 5_000
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
        idx.hnsw.efSearch = self.params.ef_search or 64  # until tuned
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
        """Append normalised vectors as the next slots; switches to HNSW past ``exact_max``.

        ``alive`` (the store's live-slot mask, covering the slots after this add) lets tuning skip
        removed entries.
        """
        if len(vectors) == 0:
            return
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.kind == "flat":
            self.index.add(x)
            if self.ntotal > self.params.exact_max:
                self._to_hnsw(alive)
            return
        due = self.kind == "hnsw" and not self.params.ef_search and self.ntotal + len(x) >= 2 * max(self.tuned_at, 1)
        if due and len(x) >= 2 * HOLDOUT:
            self.index.add(x[:-HOLDOUT])
            self.tune(x[-HOLDOUT:], alive)  # the batch's last vectors are not in the graph yet
            self.index.add(x[-HOLDOUT:])
        else:  # small adds keep the efSearch of the last tuning (see the module docstring)
            self.index.add(x)

    def _to_hnsw(self, alive: np.ndarray | None) -> None:
        flat = self.index
        n = flat.ntotal
        hnsw = self._new_hnsw()
        hold = HOLDOUT if n >= 4 * HOLDOUT else 0
        step = 100_000
        for s in range(0, n - hold, step):
            hnsw.add(flat.reconstruct_n(s, min(step, n - hold - s)))
        self.index = hnsw
        self.kind = "hnsw"
        LOG.info("store index switched to HNSW at %d entries", n)
        if self.params.ef_search:
            hnsw.hnsw.efSearch = self.params.ef_search
        elif hold:
            self.tune(flat.reconstruct_n(n - hold, hold), alive)
        if hold:
            hnsw.add(flat.reconstruct_n(n - hold, hold))

    def tune(self, queries: np.ndarray, alive: np.ndarray | None) -> float:
        """Pick the smallest efSearch whose recall@10 on ``queries`` reaches ``recall_target``.

        ``queries`` must be real vectors that are not (yet) in the graph: the store passes the last
        vectors of a large batch before inserting them, so they behave exactly like unseen images
        from the same source. (Stored vectors used as queries overrate HNSW, because the graph
        leads straight to the query's own node; synthetic probes proved unreliable both ways.)
        Ground truth is exact search over the live entries already in the index.
        """
        if self.kind != "hnsw":
            return 1.0
        n = self.ntotal
        live_n = int(alive[:n].sum()) if alive is not None else n
        if live_n < 20 or len(queries) == 0:
            return 1.0
        sel = _bitmap_selector(alive, n) if alive is not None and live_n < n else None
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, gt = self._storage().search(q, 10, params=_flat_params(sel))
        truth = [set(row.tolist()) for row in gt]
        recall = 0.0
        for ef in EF_CANDIDATES:
            p = faiss.SearchParametersHNSW(efSearch=ef, sel=sel[0] if sel else None)
            _, got = self.index.search(q, 10, params=p)
            recall = float(np.mean([len(set(a.tolist()) & b) / 10 for a, b in zip(got, truth)]))
            if recall >= self.params.recall_target:
                break
        self.index.hnsw.efSearch = ef
        self.tuned_at = n + len(q)
        self.tuned_recall = recall
        if recall < self.params.recall_target:
            LOG.warning("HNSW recall target %.2f not reached on %d entries (efSearch=%d gives %.3f on held-out "
                        "vectors): raise hnsw_m/ef_construction or lower exact_max", self.params.recall_target,
                        n, ef, recall)
        else:
            LOG.info("HNSW efSearch=%d gives recall@10=%.3f on %d held-out vectors (%d entries)", ef, recall,
                     len(q), n)
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

    def scrub(self, slots: np.ndarray) -> None:
        """Overwrite the stored vectors of removed slots with zeros (erasure from memory and snapshots).

        The slots stay in the index (HNSW cannot delete nodes) and are filtered at search time; a
        zero vector scores 0 for every query, so it only costs graph traversal until a purge.
        """
        if len(slots) == 0:
            return
        flat = self._storage()
        if self.gpu:  # pragma: no cover - needs faiss-gpu and a GPU; purge rebuilds instead
            return
        xb = faiss.rev_swig_ptr(faiss.downcast_index(flat).get_xb(), flat.ntotal * self.dim)
        view = np.asarray(xb).reshape(flat.ntotal, self.dim)
        view[np.asarray(slots, dtype=np.int64)] = 0.0

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Tuning state to keep with a serialized index."""
        return {"kind": self.kind, "ef_search": self.ef_search, "tuned_at": self.tuned_at,
                "tuned_recall": None if math.isnan(self.tuned_recall) else round(self.tuned_recall, 4)}

    def to_bytes(self) -> np.ndarray:
        """``faiss.serialize_index`` of the index (HNSW or CPU flat)."""
        return faiss.serialize_index(self.index)

    def from_bytes(self, data: np.ndarray, state: dict[str, Any], slots: int) -> None:
        """Load a serialized index of ``slots`` vectors; ValueError when it is not one."""
        idx = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        if idx.d != self.dim or idx.ntotal != slots or not isinstance(idx, (faiss.IndexHNSWFlat, faiss.IndexFlatIP)):
            raise ValueError(f"snapshot does not hold an index of {slots} {self.dim}-d vectors")
        self.index = idx
        self.gpu = False
        if isinstance(idx, faiss.IndexHNSWFlat):
            self.kind = "hnsw"
            self.index.hnsw.efSearch = int(state.get("ef_search") or self.params.ef_search or 64)
        else:
            self.kind = "flat"
        self.tuned_at = int(state.get("tuned_at") or idx.ntotal)
        self.tuned_recall = float(state.get("tuned_recall") or "nan")

    def describe(self) -> dict[str, Any]:
        """Index kind and its live parameters, for ``stats``."""
        d: dict[str, Any] = {"kind": self.kind, "slots": self.ntotal, "exact_max": self.params.exact_max,
                             "approx_max_k": self.params.approx_max_k}
        if self.kind == "hnsw":
            d.update(M=self.params.hnsw_m, ef_construction=self.params.ef_construction,
                     ef_search=self.ef_search, recall_target=self.params.recall_target, tuned_at=self.tuned_at,
                     holdout_recall=None if math.isnan(self.tuned_recall) else round(self.tuned_recall, 4))
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
