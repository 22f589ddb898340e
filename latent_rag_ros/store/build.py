"""Build (or extend) a trusted store from person crops: identity vectors + W+ codes, resumable.

Each batch of crops is embedded by the re-ID model at its own ``input_size`` (``reid(images) ->
[B, D]``, the way the protector computes a query's identity vector) and, resized to the latent
encoder's working size, inverted by the latent encoder (``latent_encoder(images) ->
[B, num_ws, w_dim]``), then appended durably with the sample's identity label (``pid``) and its
unique ``name``. A rerun after an interruption skips every name already in the store, and the
store records what it was built with, so resuming with other models fails with
StoreMismatchError instead of mixing embeddings. A :class:`BuildPlan` says what to build;
:func:`build_store` runs it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from latent_rag_ros import plans
from latent_rag_ros.core.imaging import bgr_to_tensor
from latent_rag_ros.store import BACKENDS, open_store, resolve_backend
from latent_rag_ros.store.base import StoreError, StoreMismatchError, StoreNotFoundError, VectorStore
from latent_rag_ros.store.faiss_store import DB_NAME, LEGACY_MANIFEST

LOG = logging.getLogger(__name__)


class SampleLike(Protocol):
    """What build_store reads from a sample (``latent_rag_ros.datasets.Sample`` has it)."""

    image: np.ndarray
    name: str
    pid: str | None


def _device_of(module: Any) -> torch.device:
    for p in getattr(module, "parameters", lambda: iter(()))():
        return p.device
    return torch.device("cpu")


def working_size(latent_encoder: Any, reid: Any) -> tuple[int, int]:
    """(H, W) crops are resized to: the latent encoder's ``input_size``, else the re-ID model's."""
    for m in (latent_encoder, reid):
        size = getattr(m, "input_size", None)
        if size is not None:
            return int(size[0]), int(size[1])
    return 256, 128


def default_built_with(reid: Any, latent_encoder: Any) -> dict[str, str]:
    """Model fingerprint recorded when the caller gives none: the models' ``name`` attributes."""
    return {"reid": str(getattr(reid, "name", type(reid).__name__)),
            "latent_encoder": str(getattr(latent_encoder, "name", type(latent_encoder).__name__))}


def _store_exists(out: str | os.PathLike, backend: str) -> bool:
    if resolve_backend(out, backend) == "faiss":
        return (Path(out) / DB_NAME).is_file() or (Path(out) / LEGACY_MANIFEST).is_file()
    try:
        open_store(out, backend=backend).close()
    except StoreNotFoundError:
        return False
    return True


def _batches(samples: Iterable[SampleLike], size: int) -> Iterator[list[SampleLike]]:
    batch: list[SampleLike] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class BuildPlan:
    """What one store build does (the fields were ``build_store``'s parameters); a bad field raises PlanError.

    ``samples``: crops with ``image``/``name``/``pid`` (:class:`SampleLike`), embedded ``batch_size`` at
    a time by ``reid`` (``reid(images) -> [B, dim]``, with a ``dim`` attribute) and inverted by
    ``latent_encoder`` (``-> [B, num_ws, w_dim]``) at ``image_size`` (default: :func:`working_size`).
    ``resume=True`` continues an existing store at ``out`` (samples whose ``name`` it holds are
    skipped); ``resume=False`` requires that no store exists there yet. ``built_with`` (the model
    fingerprint the store records) defaults to the models' names. ``backend``: auto / faiss /
    milvus; ``store_opts``: extra ``open_store`` keywords (``key_file``, ``latent_dtype``).
    """

    samples: Iterable[SampleLike] = field(repr=False)
    out: str | os.PathLike[str]
    reid: Any = field(repr=False)
    latent_encoder: Any = field(repr=False)
    batch_size: int = 16
    resume: bool = True
    built_with: dict[str, str] | None = None
    progress: bool = True
    image_size: tuple[int, int] | None = None
    backend: str = "auto"
    store_opts: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        plans.require(self, "samples", isinstance(self.samples, Iterable) and not isinstance(
            self.samples, (str, bytes, os.PathLike)), "an iterable of samples (image, name, pid)")
        plans.path(self, "out")
        plans.require(self, "reid", callable(self.reid) and hasattr(self.reid, "dim"),
                      "a re-ID model: callable, with a 'dim' attribute")
        plans.require(self, "latent_encoder", callable(self.latent_encoder), "a callable latent encoder")
        plans.at_least(self, "batch_size", 1)
        plans.require(self, "built_with", self.built_with is None or (isinstance(self.built_with, dict) and all(
            isinstance(k, str) for k in self.built_with)), "a dict of model fingerprints or None")
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))
        plans.require(self, "image_size", self.image_size is None or (isinstance(self.image_size, tuple) and len(
            self.image_size) == 2 and all(isinstance(v, int) and v > 0 for v in self.image_size)),
            "(height, width) of positive ints or None")
        plans.one_of(self, "backend", BACKENDS)
        plans.require(self, "store_opts", self.store_opts is None or isinstance(self.store_opts, dict),
                      "a dict of open_store keywords or None")


def build_store(plan: BuildPlan) -> dict[str, Any]:
    """Embed and invert every sample of ``plan`` into the store at ``plan.out``; returns build statistics.

    Model calls run under ``torch.no_grad`` (an optimisation-based encoder enables gradients inside
    its own forward).
    """
    samples, out, reid, latent_encoder = plan.samples, plan.out, plan.reid, plan.latent_encoder
    backend, store_opts, batch_size = plan.backend, plan.store_opts, plan.batch_size
    built_with = dict(plan.built_with or default_built_with(reid, latent_encoder))
    size = plan.image_size or working_size(latent_encoder, reid)
    device = _device_of(latent_encoder) if _device_of(latent_encoder).type != "cpu" else _device_of(reid)
    dim = int(reid.dim)
    reid_size = tuple(int(v) for v in reid.input_size) if getattr(reid, "input_size", None) is not None else None
    exists = _store_exists(out, backend)
    if exists and not plan.resume:
        raise StoreError(f"{out}: a store already exists; resume it or choose another output")
    store: VectorStore | None = None
    if exists:
        store = open_store(out, dim=dim, built_with=built_with, backend=backend, **(store_opts or {}))
    done = store.names() if store is not None else set()
    stats: dict[str, Any] = {"out": str(out), "added": 0, "skipped_existing": 0, "skipped_duplicate": 0,
                             "resumed": exists, "built_with": built_with, "image_size": list(size)}
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    t0 = time.monotonic()
    bar = tqdm(total=total, desc=f"build-store {Path(str(out)).name}", unit="crop", disable=not plan.progress or None)
    try:
        for batch in _batches(samples, batch_size):
            bar.update(len(batch))
            todo = []
            for s in batch:
                if s.name in done:
                    stats["skipped_existing" if exists else "skipped_duplicate"] += 1
                    continue
                done.add(s.name)
                todo.append(s)
            if not todo:
                continue
            images = bgr_to_tensor([s.image for s in todo], size, device)
            # identity vectors at the re-ID model's own input size, as the protector computes f
            reid_images = images if reid_size in (None, size) else bgr_to_tensor([s.image for s in todo], reid_size,
                                                                                device)
            with torch.no_grad():
                f = reid(reid_images).detach().float().cpu().numpy()
                w = latent_encoder(images).detach().float().cpu().numpy()
            if w.ndim != 3 or w.shape[0] != len(todo):
                raise ValueError(f"latent encoder returned shape {w.shape}, expected [{len(todo)}, num_ws, w_dim]")
            if store is None:
                store = open_store(out, create=True, dim=dim, num_ws=w.shape[1], w_dim=w.shape[2],
                                   built_with=built_with, backend=backend, **(store_opts or {}))
            elif (w.shape[1], w.shape[2]) != (store.num_ws, store.w_dim):
                raise StoreMismatchError(f"{out}: store holds W+ {store.num_ws}x{store.w_dim}, the latent encoder "
                                         f"gives {w.shape[1]}x{w.shape[2]}")
            store.add(f, w, [s.pid or "" for s in todo], [s.name for s in todo])
            stats["added"] += len(todo)
        if store is not None and hasattr(store, "compact"):
            store.compact()  # snapshot the index (fast opening) and truncate the SQLite WAL
        stats["size"] = len(store) if store is not None else 0
        stats["version"] = store.version if store is not None else ""
    finally:
        bar.close()
        if store is not None:
            store.close()
    stats["seconds"] = round(time.monotonic() - t0, 3)
    if stats["skipped_duplicate"]:
        LOG.warning("%d samples repeated a name seen earlier in this build and were skipped",
                    stats["skipped_duplicate"])
    return stats
