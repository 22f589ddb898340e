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

import cv2
import numpy as np

from latent_rag_ros.bagio import read_images, read_labels, read_protected
from latent_rag_ros.config import DetectorConfig
from latent_rag_ros.datasets import (
    DETECTED_KINDS,
    DatasetError,
    Sample,
    _match_label,
    crop,
    list_split,
    load_entries,
    open_source,
    read_video_frames,
    source_kind,
)
from latent_rag_ros.eval.tracks import TrackerConfig, contact_sheet, track, track_samples
from latent_rag_ros.people import crop_people

# Fewest crops of never-queried people that make an identity-disjoint attacker split; below it, crop-disjoint.
MIN_DISJOINT_ATTACK = 8


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
    query_keys: list[list[int]] | None = None            # protected bag: [stamp_ns, x, y, w, h] per query
    attack_pids: list[str | None] = field(default_factory=list)  # protected bag: identity per attacker crop

    @property
    def labelled(self) -> bool:
        """True when Rank-1/mAP can be computed (labelled queries and a gallery)."""
        return bool(self.gallery) and all(p is not None for p in self.q_pids)


def identity_disjoint(candidates: list[int], query_pids: list[str | None], pid_of: dict[int, str | None],
                      notes: list[str]) -> list[int]:
    """The attacker's crops of people who are never queried (and have an identity), when there are at least
    ``MIN_DISJOINT_ATTACK`` of them; otherwise all ``candidates`` (crop-disjoint only). Says which in ``notes``."""
    queried = set(query_pids)
    disjoint = [i for i in candidates if pid_of.get(i) is not None and pid_of[i] not in queried]
    if len(disjoint) >= MIN_DISJOINT_ATTACK:
        notes.append(f"attacker pairs: {len(disjoint)} crops of people never queried (identity-disjoint)")
        return disjoint
    notes.append(f"attacker pairs: only {len(disjoint)} crops of people never queried (< {MIN_DISJOINT_ATTACK}), "
                 "so the attacker also sees other crops of queried people (crop-disjoint only)")
    return list(candidates)


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


def _track_labels(frames: list[tuple[int, np.ndarray]], detector: Any, det_cfg: Any = None,
                  sheet: str | Path | None = None) -> tuple[dict[int, dict[str, Any]], int]:
    """Labels {frame index: {boxes, pids, camid}} of unlabelled frames from tracks (camid = time third).

    ``det_cfg`` (DetectorConfig-like: min_score, min_height, max_crops, pad) filters boxes as the
    nodes do, so the graph's boxes meet the same boxes here. Returns (labels, identities).
    """
    rules = det_cfg or DetectorConfig()
    samples = []
    for pos, (_index, frame) in enumerate(frames):   # track over positions: gaps count processed frames
        for b, person in enumerate(crop_people(detector, frame, rules)):
            samples.append(Sample(person.crop, f"p{pos}_b{b}", None, None, pos,
                                  tuple(float(v) for v in person.box)))
    segment = max(1, -(-len(frames) // 3))
    tcfg = TrackerConfig(max_gap=2)
    n_ids = track_samples(samples, tcfg, segment=segment)
    if sheet is not None and n_ids:
        tracks = track([s.frame for s in samples], [s.box for s in samples], [s.image for s in samples], tcfg)
        for t in tracks:
            t.frames = [frames[p][0] for p in t.frames]   # the sheet shows frame indices, not positions
        contact_sheet(tracks, [s.image for s in samples], sheet)
    labels: dict[int, dict[str, Any]] = {}
    for s in samples:
        index = frames[s.frame][0]
        s.frame = index
        lab = labels.setdefault(index, {"boxes": [], "pids": [], "camid": s.camid})
        lab["boxes"].append(list(s.box))
        lab["pids"].append(s.pid)
    return labels, n_ids


def _protected_bag_data(path: str, protected_bag: str, max_queries: int | None,
                        max_attack: int | None, seed: int, detector: Any = None, det_cfg: Any = None,
                        sheet: str | Path | None = None) -> EvalData:
    """Queries are the graph's protected crops; identities from the bag's labels or from tracks.

    With labels (the camera bag's label topic, or tracks of a detector over its frames), each
    protected crop takes the pid of the labelled box it overlaps (IoU >= 0.5); the raw labelled
    crops of the bag form the gallery (time segments as cameras). Labelled crops with a match in
    another segment alternate between queries and attacker pairs; the rest train the attacker.
    """
    records = read_protected(protected_bag)
    if not records:
        raise ValueError(f"{protected_bag}: no protected crops")
    wanted: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        wanted.setdefault(r["stamp_ns"], []).append(i)
    frames = [(k, stamp, frame) for k, (_t, stamp, frame) in enumerate(read_images(path))]
    notes: list[str] = []
    by_stamp = read_labels(path)
    if not by_stamp and detector is not None and frames:
        by_index, n_ids = _track_labels([(k, f) for k, _s, f in frames], detector, det_cfg, sheet)
        by_stamp = {stamp: by_index[k] for k, stamp, _f in frames if k in by_index}
        notes.append(f"identities from tracks (IoU + colour histogram) over the camera bag: {n_ids} people, "
                     "thirds of the bag act as cameras; a person who leaves and re-enters counts twice")
    originals: dict[int, np.ndarray] = {}
    gallery, g_pids, g_cams = [], [], []
    for k, stamp, frame in frames:
        lab = by_stamp.get(stamp)
        for i in wanted.get(stamp, []):
            x, y, w, h = records[i]["box"]
            try:
                originals[i] = crop(frame, (x, y, x + w, y + h))
            except ValueError:
                continue
            if lab:
                pid, cam = _match_label(np.array([x, y, x + w, y + h], np.float64), lab)
                records[i]["pid"], records[i]["camid"] = pid, (cam if cam is not None else k)
        for box, pid in zip((lab or {}).get("boxes", []), (lab or {}).get("pids", []), strict=False):
            if pid is None:
                continue
            try:
                gallery.append(crop(frame, box))
            except ValueError:
                continue
            g_pids.append(str(pid))
            g_cams.append(int(lab.get("camid") if lab.get("camid") is not None else k))
    keep = [i for i in range(len(records)) if i in originals]
    if not keep:
        raise ValueError(f"{protected_bag}: no protected crop matches a frame of {path} (header stamps differ)")
    if len(keep) < len(records):
        notes.append(f"{len(records) - len(keep)} protected crops had no matching camera frame")
    cams_of: dict[str, set[int]] = {}
    for p, c in zip(g_pids, g_cams, strict=True):
        cams_of.setdefault(p, set()).add(c)
    matchable = [i for i in keep if records[i].get("pid") is not None
                 and cams_of.get(records[i]["pid"], set()) - {records[i]["camid"]}]
    if len(matchable) >= 2:
        q_idx = _spread(matchable[0::2], max_queries)
        rest = [i for i in keep if i not in set(q_idx)]
        notes.append(f"{len(matchable)} protected crops have a labelled match at another time; every other one "
                     "is a query")
    else:
        n_q = max_queries if max_queries is not None else max(1, (len(keep) + 1) // 2)
        n_q = min(n_q, len(keep) - 1) if len(keep) > 1 else 1
        q_idx, rest = keep[:n_q], keep[n_q:]
        gallery, g_pids, g_cams = [], [], []
    if gallery:   # identities known: the attacker learns from people who are never queried (issue 16 item 7)
        rest = identity_disjoint(rest, [records[i]["pid"] for i in q_idx],
                                 {i: records[i].get("pid") for i in rest}, notes)
    a_idx = _subsample(rest, max_attack, seed)

    def prot(i: int) -> np.ndarray:
        img, o = records[i]["image"], originals[i]
        if img.shape[:2] != o.shape[:2]:
            img = cv2.resize(img, (o.shape[1], o.shape[0]), interpolation=cv2.INTER_LINEAR)
        return img

    if gallery:
        labels: list[str | None] = [records[i]["pid"] for i in q_idx]
        q_cams = [int(records[i]["camid"]) for i in q_idx]
    else:
        labels = [records[i]["label"] or None for i in q_idx]
        q_cams = [-1] * len(q_idx)
    return EvalData(
        "bag+protected", path, [originals[i] for i in q_idx], labels, q_cams,
        [f"{records[i]['stamp_ns']}" for i in q_idx], gallery, list(g_pids), list(g_cams),
        attack=[originals[i] for i in a_idx],
        protected=[prot(i) for i in q_idx],
        protected_embeddings=np.stack([records[i]["embedding"] for i in q_idx]),
        protected_model=records[q_idx[0]]["embedding_model"],
        attack_protected=[prot(i) for i in a_idx], notes=notes,
        attack_pids=[records[i].get("pid") for i in a_idx],
        query_keys=[[int(records[i]["stamp_ns"]), *(int(v) for v in records[i]["box"])] for i in q_idx])


def _tracked_data(path: str, kind: str, detector: Any, det_cfg: Any, max_queries: int | None,
                  max_attack: int | None, seed: int, sheet: str | Path | None, max_frames: int = 200,
                  store_fraction: float = 0.5) -> EvalData:
    """An unlabelled video or camera bag: the first part builds the store, the rest is evaluated on tracks.

    At most ``max_frames`` frames are read, evenly spaced. The first ``store_fraction`` of them give the
    trusted store's crops (as the demo does); on the rest, tracks give identities, thirds of the time
    act as cameras, the middle crop of each (person, third) with the person seen in another third is
    a query, and the other labelled crops are the raw gallery (and the attacker's training data).
    """
    if detector is None:
        raise ValueError(f"{path}: an unlabelled {kind} needs a person detector (detector.kind)")
    if kind == "video":
        cap = cv2.VideoCapture(path)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        step = max(1, -(-total // max_frames)) if total > 0 else 1
        frames = list(read_video_frames(path, frame_step=step))
    else:
        frames = [(k, f) for k, (_t, _s, f) in enumerate(read_images(path))]
        if len(frames) > max_frames:
            frames = _spread(frames, max_frames)
    if len(frames) < 4:
        raise DatasetError(f"{path}: {len(frames)} frames; an unlabelled {kind} needs at least 4 "
                           "(half build the trusted store, half are evaluated)")
    n_store = max(1, int(len(frames) * store_fraction)) if store_fraction > 0 else 0
    rules = det_cfg or DetectorConfig()
    store = [Sample(p.crop, f"{Path(path).name}#f{i:06d}_b{b}", None, None, i)
             for i, f in frames[:n_store] for b, p in enumerate(crop_people(detector, f, rules))]
    if not store and n_store:
        raise DatasetError(f"{path}: no person detected in the first {n_store} frames to build the trusted store")
    rest = frames[n_store:]
    labels, n_ids = _track_labels(rest, detector, det_cfg, sheet)
    by_frame = dict(rest)
    samples = []
    for i, lab in sorted(labels.items()):
        for b, (box, pid) in enumerate(zip(lab["boxes"], lab["pids"], strict=True)):
            samples.append(Sample(crop(by_frame[i], box), f"{Path(path).name}#f{i:06d}_b{b}", pid,
                                  lab["camid"], i, tuple(box)))
    notes = [(f"no labels: the first {n_store} of {len(frames)} frames built the trusted store ({len(store)} crops); "
              if n_store else f"no labels; the given store is used; {len(frames)} frames: ") +
             f"identities in {len(rest)} frames from tracks (IoU + colour histogram): {n_ids} people; thirds "
             "of that time act as cameras; a person who leaves and re-enters counts twice"]
    groups: dict[tuple[str, int], list[Any]] = {}
    for smp in samples:
        if smp.pid is not None:
            groups.setdefault((smp.pid, smp.camid), []).append(smp)
    cams: dict[str, set[int]] = {}
    for pid, cam in groups:
        cams.setdefault(pid, set()).add(cam)
    query = [g[len(g) // 2] for (pid, cam), g in groups.items() if cams[pid] - {cam}]
    query = _spread(query, max_queries)
    if not query:
        notes.append("no tracked person was seen in two thirds of the time: no Rank-1/mAP")
        unl = _unsplit_data(path, kind, [Sample(x.image, x.name, None, None, x.frame) for x in samples] or store,
                            max_queries, max_attack, seed)
        unl.g_samples, unl.notes = store, notes + unl.notes
        return unl
    qn = {q.name for q in query}
    gallery = [x for x in samples if x.pid is not None and x.name not in qn]
    attack = _subsample(gallery, max_attack, seed)
    return EvalData(kind, path, [q.image for q in query], [q.pid for q in query], [int(q.camid) for q in query],
                    [_group_of(q) for q in query], [g.image for g in gallery], [g.pid for g in gallery],
                    [int(g.camid) for g in gallery], store, [a.image for a in attack], notes=notes)


def load_eval_data(source: str | Path, max_queries: int | None = None, max_gallery: int | None = None,
                   max_attack: int | None = 256, protected_bag: str | Path | None = None,
                   detector: Any = None, seed: int = 0, det_cfg: Any = None,
                   sheet: str | Path | None = None, store_fraction: float = 0.5) -> EvalData:
    """Read an evaluation source into queries, raw gallery and the attacker's disjoint split.

    ``det_cfg`` filters detections like the nodes; ``sheet``: where to write the contact sheet of
    tracks when identities come from tracking; ``store_fraction``: the share of an unlabelled video or
    bag that builds the trusted store (0 when a store is given: everything is evaluated).
    """
    path = str(source)
    kind = source_kind(path)
    if protected_bag is not None:
        if kind != "bag":
            raise ValueError(f"--protected needs the camera bag it was recorded from as source, got a {kind}")
        return _protected_bag_data(path, str(protected_bag), max_queries, max_attack, seed, detector, det_cfg,
                                   sheet)
    if kind in ("market", "msmt17", "cuhk03"):
        return _benchmark_data(path, kind, max_queries, max_gallery, max_attack, seed)
    if kind in DETECTED_KINDS:
        if kind == "video" or not read_labels(path):
            return _tracked_data(path, kind, detector, det_cfg, max_queries, max_attack, seed, sheet,
                                 store_fraction=store_fraction)
    samples = list(open_source(path, detector=detector))
    return _unsplit_data(path, kind, samples, max_queries, max_attack, seed)
