"""Evaluation splits of a source: queries, raw gallery, and the attacker's disjoint split.

Benchmarks (Market-1501, MSMT17, CUHK03) use their own query / gallery split; the attacker trains
on the train split (or, when there is none, on gallery images, which are disjoint from the queries).

Sources without a query/gallery split (a plain folder, a video, a bag):

* labelled: for every identity with two or more crops, its first crop is a query and the rest
  are gallery; unlabelled crops are gallery distractors. When such a source has a single camera
  (or none recorded), same-camera exclusion is switched off (query camid -1, gallery -2) and
  the report says so, since otherwise no match would be left;
* unlabelled: no Rank-1/mAP; queries are every other crop, the others train the attacker.

With ``protected_bag`` (a bag recorded from the ROS graph's ``/reid/protected``), the Latent-RAG
queries are the graph's own protected crops: each one's original is cut from the camera bag at
the message's header stamp and box. The first half of those messages (or ``max_queries``) are
evaluation queries, the rest are the attacker's training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EvalData:
    """Queries, raw gallery and the attacker's disjoint split of one evaluation source."""

    kind: str
    path: str
    query: list[np.ndarray]
    q_pids: list[str | None]
    q_camids: list[int]
    q_groups: list[str]                      # crops sharing a group (frame) are different people
    gallery: list[np.ndarray] = field(default_factory=list)
    g_pids: list[str | None] = field(default_factory=list)
    g_camids: list[int] = field(default_factory=list)
    g_samples: list[Any] = field(default_factory=list)   # Samples the store is built from
    attack: list[np.ndarray] = field(default_factory=list)
    protected: list[np.ndarray] | None = None            # from a protected bag
    protected_embeddings: np.ndarray | None = None
    protected_model: str | None = None
    attack_protected: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """True when Rank-1/mAP can be computed (labelled queries and a gallery)."""
        return bool(self.gallery) and all(p is not None for p in self.q_pids)


def _subsample(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or n >= len(items):
        return items
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in idx]


def _spread(items: list[Any], n: int | None) -> list[Any]:
    """``n`` items evenly spread over the list (deterministic), or all."""
    if n is None or n >= len(items):
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def _benchmark_data(path: str, kind: str, max_queries: int | None, max_gallery: int | None,
                    max_attack: int | None, seed: int) -> EvalData:
    from latent_rag_ros.datasets import DatasetError, list_split, load_entries

    q_entries = _spread(list_split(path, "query"), max_queries)
    g_entries = list_split(path, "gallery")
    if max_gallery is not None and max_gallery < len(g_entries):
        # keep every true match of the chosen queries, fill up with the others
        qp = {e.pid for e in q_entries}
        must = [e for e in g_entries if e.pid in qp]
        rest = [e for e in g_entries if e.pid not in qp]
        g_entries = must + _subsample(rest, max(0, max_gallery - len(must)), seed)
    try:
        a_entries = list_split(path, "train")
    except DatasetError:
        a_entries = []
    notes = []
    if not a_entries:
        a_entries = g_entries
        notes.append("no train split: the attacker trains on gallery images (disjoint from the queries)")
    a_entries = _subsample(a_entries, max_attack, seed)
    queries = list(load_entries(q_entries))
    gallery = list(load_entries(g_entries))
    attack = [s.image for s in load_entries(a_entries)]
    return EvalData(kind, path, [s.image for s in queries], [s.pid for s in queries],
                    [int(s.camid if s.camid is not None else -1) for s in queries], [s.name for s in queries],
                    [s.image for s in gallery], [s.pid for s in gallery],
                    [int(s.camid if s.camid is not None else -2) for s in gallery], gallery, attack, notes=notes)


def _group_of(sample: Any) -> str:
    return f"{sample.name.split('#')[0]}#{sample.frame}" if sample.frame is not None else sample.name


def _unsplit_data(path: str, kind: str, samples: list[Any], max_queries: int | None,
                  max_attack: int | None, seed: int) -> EvalData:
    if not samples:
        from latent_rag_ros.datasets import DatasetError

        raise DatasetError(f"{path}: no person crops found")
    labelled = [s for s in samples if s.pid is not None]
    notes: list[str] = []
    if labelled:
        groups: dict[str, list[Any]] = {}
        for s in labelled:
            groups.setdefault(s.pid, []).append(s)
        query = [g[0] for g in groups.values() if len(g) >= 2]
        query = _spread(query, max_queries)
        qnames = {s.name for s in query}
        gallery = [s for s in samples if s.name not in qnames]
        if not query:
            raise ValueError(f"{path}: no identity has two crops, so there is no query with a match")
        cams = {s.camid for s in query + gallery}
        single = len(cams - {None}) <= 1
        if single:
            notes.append("single-camera source: same-camera exclusion switched off")
        qc = [-1 if single else int(s.camid) for s in query]
        gc = [-2 if single else int(s.camid) for s in gallery]
        attack = _subsample(gallery, max_attack, seed)
        return EvalData(kind, path, [s.image for s in query], [s.pid for s in query], qc,
                        [_group_of(s) for s in query], [s.image for s in gallery], [s.pid for s in gallery], gc,
                        gallery, [s.image for s in attack], notes=notes)
    notes.append("unlabelled source: no Rank-1/mAP; every other crop is a query")
    query = _spread(samples[0::2], max_queries)
    attack = _subsample(samples[1::2], max_attack, seed)
    return EvalData(kind, path, [s.image for s in query], [None] * len(query), [-1] * len(query),
                    [_group_of(s) for s in query], attack=[s.image for s in attack], notes=notes)


def _protected_bag_data(path: str, protected_bag: str, max_queries: int | None,
                        max_attack: int | None, seed: int) -> EvalData:
    import cv2

    from latent_rag_ros.datasets import crop
    from latent_rag_ros.eval.bags import read_images, read_protected

    records = read_protected(protected_bag)
    if not records:
        raise ValueError(f"{protected_bag}: no protected crops")
    wanted: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        wanted.setdefault(r["stamp_ns"], []).append(i)
    originals: dict[int, np.ndarray] = {}
    for _t, stamp, frame in read_images(path):
        for i in wanted.get(stamp, []):
            x, y, w, h = records[i]["box"]
            try:
                originals[i] = crop(frame, (x, y, x + w, y + h))
            except ValueError:
                continue
    keep = [i for i in range(len(records)) if i in originals]
    if not keep:
        raise ValueError(f"{protected_bag}: no protected crop matches a frame of {path} (header stamps differ)")
    notes = []
    if len(keep) < len(records):
        notes.append(f"{len(records) - len(keep)} protected crops had no matching camera frame")
    n_q = max_queries if max_queries is not None else max(1, (len(keep) + 1) // 2)
    n_q = min(n_q, len(keep) - 1) if len(keep) > 1 else 1
    q_idx, a_idx = keep[:n_q], _subsample(keep[n_q:], max_attack, seed)

    def prot(i: int) -> np.ndarray:
        img, o = records[i]["image"], originals[i]
        if img.shape[:2] != o.shape[:2]:
            img = cv2.resize(img, (o.shape[1], o.shape[0]), interpolation=cv2.INTER_LINEAR)
        return img

    labels = [records[i]["label"] or None for i in q_idx]
    return EvalData(
        "bag+protected", path, [originals[i] for i in q_idx], labels, [-1] * len(q_idx),
        [f"{records[i]['stamp_ns']}" for i in q_idx], attack=[originals[i] for i in a_idx],
        protected=[prot(i) for i in q_idx],
        protected_embeddings=np.stack([records[i]["embedding"] for i in q_idx]),
        protected_model=records[q_idx[0]]["embedding_model"],
        attack_protected=[prot(i) for i in a_idx], notes=notes)


def load_eval_data(source: str | Path, max_queries: int | None = None, max_gallery: int | None = None,
                   max_attack: int | None = 256, protected_bag: str | Path | None = None,
                   detector: Any = None, seed: int = 0) -> EvalData:
    """Read an evaluation source into queries, raw gallery and the attacker's disjoint split."""
    from latent_rag_ros.datasets import open_source, source_kind

    path = str(source)
    kind = source_kind(path)
    if protected_bag is not None:
        if kind != "bag":
            raise ValueError(f"--protected needs the camera bag it was recorded from as source, got a {kind}")
        return _protected_bag_data(path, str(protected_bag), max_queries, max_attack, seed)
    if kind in ("market", "msmt17", "cuhk03"):
        return _benchmark_data(path, kind, max_queries, max_gallery, max_attack, seed)
    samples = list(open_source(path, detector=detector))
    return _unsplit_data(path, kind, samples, max_queries, max_attack, seed)
