"""The batched Protector shared by the protector node, the offline CLI and the evaluation.

crops -> identity vectors f (re-ID encoder) -> W_m (identity-guided retrieval) -> w* (inverse
self-attention) -> w*_adv (T confined sign-gradient steps) -> protected images G(w*_adv) and the
re-ID embedding of each protected image, with per-stage timings and per-step losses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latent_rag_ros.config import ProtectorConfig
from latent_rag_ros.core.augment import inverse_self_attention
from latent_rag_ros.core.fastpath import fast_generation, loss_encoder, use_batched_backward
from latent_rag_ros.core.generation import GenerationTrace, StepOptions, identity_aligned_generation, render
from latent_rag_ros.core.imaging import bgr_to_tensor, tensor_to_bgr
from latent_rag_ros.core.parallel import GenerationPool, resolve_workers
from latent_rag_ros.core.retrieval import Retrieved, retrieve

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


@dataclass
class ProtectResult:
    """Output of one protected batch (see module docstring)."""

    images: torch.Tensor                 # [B,3,Hg,Wg] in [0,1]: the protected images
    embeddings: torch.Tensor             # [B,D] re-ID embedding of each protected image
    identity: torch.Tensor               # [B,D] f, the raw crop's identity vector (never egress)
    ids: np.ndarray                      # [B,m] store ids of the retrieved codes
    scores: np.ndarray                   # [B,m] their cosine similarity to f
    store_version: str
    w_adv: torch.Tensor                  # [B,L,C]
    timings_ms: dict[str, float] = field(default_factory=dict)
    trace: GenerationTrace = field(default_factory=GenerationTrace)
    w_star: torch.Tensor | None = None   # [B,L,C] the fused start code (eq. 5), where the T steps began

    @property
    def losses(self) -> list[dict[str, float]]:
        """Per-step batch-mean losses."""
        return self.trace.as_dicts()


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.timer.ms[self.name] = self.timer.ms.get(self.name, 0.0) + (time.perf_counter() - self.t0) * 1e3


class Protector:
    """Latent-RAG protection of person crops with a generator G and a re-ID encoder E."""

    def __init__(
        self,
        generator: torch.nn.Module,
        reid: torch.nn.Module,
        cfg: ProtectorConfig | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
    ) -> None:
        self.cfg = cfg or ProtectorConfig()
        self.device = resolve_device(str(device) if device is not None else self.cfg.device)
        self.dtype = _DTYPES[dtype or self.cfg.dtype]
        if self.device.type == "cpu" and self.dtype != torch.float32:
            raise ValueError("half precision needs a GPU: use dtype float32 on CPU")
        self.generator = generator.to(self.device, self.dtype).eval().requires_grad_(False)
        self.reid = reid.to(self.device).eval().requires_grad_(False)
        self.working_size = (int(generator.img_height), int(generator.img_width))
        size = getattr(reid, "input_size", None)
        self.reid_size = (int(size[0]), int(size[1])) if size is not None else self.working_size
        fast_reid = self.cfg.fast_reid if self.cfg.fast_path else "off"
        self.loss_reid = loss_encoder(self.reid, fast_reid)   # E as used inside L_id
        self.batched_backward = use_batched_backward(self.cfg.batched_backward, self.device)
        workers = resolve_workers(self.cfg.workers, self.device) if self.cfg.fast_path else 1
        # workers > 1: the fast path's loops run in that many 1-thread processes (core/parallel.py)
        self.pool = GenerationPool(self.generator, self.reid, workers, fast_reid,
                                   batched_backward=self.batched_backward) if workers > 1 else None

    @property
    def workers(self) -> int:
        """Processes that run the T-step loops (1: this one)."""
        return self.pool.workers if self.pool is not None else 1

    def close(self) -> None:
        """Stop the worker processes, if any (a later protect() starts them again)."""
        if self.pool is not None:
            self.pool.close()

    @property
    def step_options(self) -> StepOptions:
        """The generation options of the current config."""
        return self.cfg

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """f = E(I): L2-normalised re-ID vectors [B,D] of crops [B,3,H,W] in [0,1]."""
        return self.reid(images.to(self.device).float())

    def prepare(self, crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """BGR crops -> [B,3,Hg,Wg] in [0,1] at the generator's working size."""
        return bgr_to_tensor(crops_bgr, self.working_size, self.device)

    @torch.no_grad()
    def identity(self, crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """f = E(I) from the crops themselves at the re-ID model's input size (not the generator's smaller one).

        A generator working size below the re-ID input (the demo's 64x32) would otherwise blur f, the
        target of L_id, and the store's identity vectors are computed the same way (store/build.py).
        """
        return self.embed(bgr_to_tensor(crops_bgr, self.reid_size, self.device))

    def protect(
        self,
        images: torch.Tensor,
        retrieved: Retrieved,
        identity: torch.Tensor | None = None,
        timings: dict[str, float] | None = None,
    ) -> ProtectResult:
        """Fuse the retrieved codes (eq. 3-5), run T steps (eq. 6-9) and render the protected images."""
        if retrieved.latents.ndim != 4 or retrieved.latents.shape[0] != images.shape[0]:
            raise ValueError(f"latents must be [B,m,L,C] with B={images.shape[0]}, got {retrieved.latents.shape}")
        num_ws, w_dim = retrieved.latents.shape[2:]
        if (num_ws, w_dim) != (self.generator.num_ws, self.generator.w_dim):
            raise ValueError(
                f"store W+ shape {num_ws}x{w_dim} does not fit the generator "
                f"({self.generator.num_ws}x{self.generator.w_dim})"
            )
        timer = _Timer(self.device)
        timer.ms.update(timings or {})
        images = images.to(self.device).float()
        if tuple(images.shape[-2:]) != self.working_size:
            images = torch.nn.functional.interpolate(images, size=self.working_size, mode="bilinear",
                                                     align_corners=False)
        if identity is None:
            with timer.stage("embed"):
                identity = self.embed(images)
        torch.manual_seed(self.cfg.seed)
        with timer.stage("augment"):
            lat = torch.as_tensor(retrieved.latents, dtype=torch.float32, device=self.device)
            if self.cfg.augment:
                w_star = inverse_self_attention(lat, self.cfg.temperature, self.cfg.scale or None, self.cfg.eps)
            else:
                w_star = lat.mean(dim=1)
        if self.cfg.fast_path:
            ms: dict[str, float] = {}
            with timer.stage("generate"):
                if self.pool is not None:
                    res = self.pool.generate(w_star, images, identity, self.step_options)
                else:
                    res = fast_generation(w_star, images, identity, self.generator, self.loss_reid,
                                          self.step_options, self.batched_backward, ms)
            if "render" in ms:   # in-process: the final render ran inside the loop's last step
                timer.ms["generate"] -= ms["render"]
                timer.ms["render"] = ms["render"]
            w_adv, trace, protected, emb = res.w_adv, res.trace, res.images, res.embeddings
        else:
            with timer.stage("generate"):
                w_adv, trace = identity_aligned_generation(
                    w_star, images, identity, self.generator, self.reid, self.step_options
                )
            with timer.stage("render"), torch.no_grad():
                protected = render(self.generator, w_adv)
                emb = self.reid(protected)
        timer.ms["total"] = sum(v for k, v in timer.ms.items() if k != "total")
        return ProtectResult(protected, emb, identity, retrieved.ids, retrieved.scores, retrieved.version,
                             w_adv, dict(timer.ms), trace, w_star)

    def protect_with_store(
        self,
        images: torch.Tensor,
        store: Any,
        exclude_ids: Sequence[int | None] | None = None,
        exclude_labels: Sequence[str | None] | None = None,
        identity: torch.Tensor | None = None,
    ) -> ProtectResult:
        """Embed (unless ``identity`` is given), retrieve from a local store (eq. 1-2) and protect a batch."""
        timer = _Timer(self.device)
        images = images.to(self.device).float()
        if identity is None:
            with timer.stage("embed"):
                identity = self.embed(images)
        if not self.cfg.exclude_same_label:
            exclude_labels = None
        with timer.stage("retrieve"):
            got = retrieve(store, identity.cpu().numpy(), self.cfg.m, exclude_ids, exclude_labels,
                           self.cfg.duplicate_tol)
        return self.protect(images, got, identity, timer.ms)

    def protect_crops(
        self,
        crops_bgr: Sequence[np.ndarray],
        store: Any,
        exclude_ids: Sequence[int | None] | None = None,
        exclude_labels: Sequence[str | None] | None = None,
    ) -> tuple[list[np.ndarray], ProtectResult]:
        """Protect BGR crops of any sizes in batches of ``cfg.batch_size``; outputs keep each crop's size."""
        if len(crops_bgr) == 0:
            raise ValueError("no crops to protect")
        sizes = [c.shape[:2] for c in crops_bgr]
        parts: list[ProtectResult] = []
        bs = self.cfg.batch_size
        for s in range(0, len(crops_bgr), bs):
            sl = slice(s, s + bs)
            ex_i = list(exclude_ids)[sl] if exclude_ids is not None else None
            ex_l = list(exclude_labels)[sl] if exclude_labels is not None else None
            t0 = time.perf_counter()
            identity = self.identity(crops_bgr[sl])
            embed_ms = (time.perf_counter() - t0) * 1e3
            part = self.protect_with_store(self.prepare(crops_bgr[sl]), store, ex_i, ex_l, identity)
            part.timings_ms["embed"] = part.timings_ms.get("embed", 0.0) + embed_ms
            parts.append(part)
        result = merge_results(parts)
        return tensor_to_bgr(result.images, sizes), result


def merge_results(parts: list[ProtectResult]) -> ProtectResult:
    """Concatenate batch results (timings add up; traces are concatenated per step)."""
    if len(parts) == 1:
        return parts[0]
    timings: dict[str, float] = {}
    for p in parts:
        for k, v in p.timings_ms.items():
            timings[k] = timings.get(k, 0.0) + v
    trace = GenerationTrace(
        [[x for p in parts for x in p.trace.distance[t]] for t in range(len(parts[0].trace.distance))],
        [[x for p in parts for x in p.trace.id_loss[t]] for t in range(len(parts[0].trace.id_loss))],
    )
    return ProtectResult(
        torch.cat([p.images for p in parts]), torch.cat([p.embeddings for p in parts]),
        torch.cat([p.identity for p in parts]), np.concatenate([p.ids for p in parts]),
        np.concatenate([p.scores for p in parts]), parts[-1].store_version,
        torch.cat([p.w_adv for p in parts]), timings, trace,
        torch.cat([p.w_star for p in parts]) if all(p.w_star is not None for p in parts) else None,
    )
