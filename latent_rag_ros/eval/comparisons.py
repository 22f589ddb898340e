"""The learned comparison methods of the paper's tables that are public algorithms: PixelFade and AVIH.

Both turn a crop into a noise-like image whose re-ID feature (under one "authorization" model, here
the evaluation's primary backbone) stays close to the original's, by iterating on the pixels:

* **PixelFade** (Zhang et al., ACM MM 2024, "noise-guided progressive replacement"): minimise
  ||x_p - eta||^2 subject to ||f(x_p) - f(x)||^2 <= eps, with eta ~ N(0, 1) in the model's normalised
  image space. Heuristic solver, alternating two operations: *partial replacement* (the pixels are
  split at random into ``fade_parts`` disjoint sets; one set at a time is overwritten by eta, during
  the ``warmup`` first iterations and then whenever the feature constraint holds) and the
  *constraint operation* (a momentum gradient step on the feature distance, the gradient normalised
  by its mean absolute value; a larger step ``beta_far`` while the constraint is violated).
  Defaults are the paper's released settings (100 iterations, 5 parts, 5 warm-up, momentum 0.6,
  steps 0.01 / 0.04 in normalised units); ``eps`` is rescaled to our L2-normalised features.
* **AVIH** (Su et al., "Hiding Visual Information via Obfuscating Adversarial Perturbations",
  ICCV 2023): start from Gaussian noise and minimise feature distance + c x variance consistency
  (the variance over positions of 4x4 box sums per channel, which flattens local structure), with
  the same normalised momentum step (0.3) and a step decay when the loss keeps rising. AVIH's third
  term, the reconstruction loss through the key holder's private *key generative model*, is left
  out: that model is a trained pix2pix network per key, which no public weights provide and whose
  recovery this evaluation does not measure (an attacker without the key is what Table III models).

Each image is optimised at its own crop size, and the re-ID model sees it through an area
down-sampling to its input size, which is what the measurement path (``embed_published``: uint8 crop,
OpenCV area resize) does; the result is rounded to uint8. PrivacyReID and SecureReID (trained
anonymiser networks, :mod:`latent_rag_ros.eval.anonymisers`) are registered here under the same
names and report keys; they apply a checkpoint instead of iterating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COMPARISONS = ("pixelfade", "avih", "privacyreid", "securereid")
ITERATIVE = ("pixelfade", "avih")


@dataclass
class PixelFadeConfig:
    """PixelFade's solver settings (released defaults; ``eps`` for L2-normalised features)."""

    iters: int = 100
    fade_parts: int = 5
    warmup: int = 5
    momentum: float = 0.6
    beta: float = 0.01        # constraint step while ||f(x_p) - f(x)||^2 < eps (normalised image units)
    beta_far: float = 0.04    # ... and while it is not
    eps: float = 0.1          # squared L2 distance of unit features (= 2 (1 - cosine)): cosine >= 0.95
    final_steps: int = 5      # the last iterations only tighten the constraint (no replacement)
    seed: int = 0


@dataclass
class AVIHConfig:
    """AVIH's solver settings (released step rule; loss weights for our unit-norm features)."""

    iters: int = 100
    alpha: float = 0.01       # step in [0, 1] image units
    momentum: float = 0.3
    vc_weight: float = 0.002  # variance-consistency weight c
    vc_kernel: int = 4
    decay_after: int = 16     # rising-loss iterations before the step shrinks
    decay: float = 0.85
    seed: int = 0


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255.0


def _to_bgr(x: torch.Tensor) -> np.ndarray:
    arr = (x[0].detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, ::-1])


def _embedder(reid: torch.nn.Module) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Re-ID features [N, D] of crop-size images (each [1,3,h,w] in [0,1], sizes may differ), in one batch.

    Each image reaches the model's input size by area down-sampling, as the measurement path's
    OpenCV area resize does (bilinear when a crop is smaller than the input).
    """
    size = tuple(getattr(reid, "input_size", (256, 128)))

    def fit(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return lambda xs: reid(torch.cat([fit(x) for x in xs]))


def _norm_stats(reid: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    mean = getattr(reid, "mean", None)
    std = getattr(reid, "std", None)
    if mean is None or std is None:
        return torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    return mean.float().cpu().view(1, 3, 1, 1), std.float().cpu().view(1, 3, 1, 1)


def replacement_masks(shape: Sequence[int], parts: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Split the elements of a tensor of ``shape`` at random into ``parts`` disjoint boolean masks (a partition)."""
    n = int(np.prod(shape))
    order = torch.randperm(n, generator=gen)
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    masks = []
    for k in range(parts):
        m = torch.zeros(n, dtype=torch.bool)
        m[order[bounds[k]:bounds[k + 1]]] = True
        masks.append(m.view(*shape))
    return masks


def _normalised_step(grad: torch.Tensor) -> torch.Tensor:
    return grad / grad.abs().mean().clamp_min(1e-12)


def pixelfade(reid: torch.nn.Module, images: Sequence[np.ndarray], cfg: PixelFadeConfig) -> list[np.ndarray]:
    """PixelFade of uint8 BGR crops under the authorization model ``reid`` (crop sizes kept; crop i seeds seed+i)."""
    embed = _embedder(reid)
    mean, std = _norm_stats(reid)
    x0 = [_to_tensor(img) for img in images]
    with torch.no_grad():
        target = embed(x0)
    z = [(x - mean) / std for x in x0]                     # work in the model's normalised space
    lo, hi = (0 - mean) / std, (1 - mean) / std
    etas, masks = [], []
    for i, zi in enumerate(z):
        gen = torch.Generator().manual_seed(cfg.seed + i)
        etas.append(torch.randn(zi.shape, generator=gen))
        masks.append(replacement_masks(zi.shape, max(1, cfg.fade_parts), gen))
    momentum = [torch.zeros_like(zi) for zi in z]
    satisfied = [True] * len(z)
    for step in range(cfg.iters):
        for i in range(len(z)):
            if step < cfg.warmup or satisfied[i]:
                z[i] = torch.where(masks[i][step % len(masks[i])], etas[i], z[i])
        z = [zi.detach().requires_grad_(True) for zi in z]
        dist = (embed([(zi * std + mean).clamp(0, 1) for zi in z]) - target).pow(2).sum(1)
        grads = torch.autograd.grad(dist.sum(), z)
        d = dist.detach()
        for i, g in enumerate(grads):
            momentum[i] = cfg.momentum * momentum[i] + _normalised_step(g)
            satisfied[i] = float(d[i]) < cfg.eps and step < cfg.iters - cfg.final_steps
            step_size = cfg.beta if satisfied[i] else cfg.beta_far
            z[i] = torch.maximum(torch.minimum(z[i].detach() - momentum[i] * step_size, hi), lo)
    return [_to_bgr((zi * std + mean).clamp(0, 1)) for zi in z]


def variance_consistency(x: torch.Tensor, kernel: int = 4) -> torch.Tensor:
    """AVIH's L_vc: per channel, the variance over positions of ``kernel`` x ``kernel`` box sums, summed."""
    box = torch.ones(1, 1, kernel, kernel, dtype=x.dtype)
    total = x.new_zeros(())
    for c in range(x.shape[1]):
        sums = F.conv2d(x[:, c:c + 1], box)
        total = total + sums.reshape(-1).var(unbiased=True)
    return total


def avih(reid: torch.nn.Module, images: Sequence[np.ndarray], cfg: AVIHConfig) -> list[np.ndarray]:
    """AVIH (without the key-model term) of uint8 BGR crops under ``reid`` (crop sizes kept; crop i seeds seed+i)."""
    embed = _embedder(reid)
    x0 = [_to_tensor(img) for img in images]
    with torch.no_grad():
        target = embed(x0)
    x = [torch.randn(xi.shape, generator=torch.Generator().manual_seed(cfg.seed + i)).clamp(0, 1)
         for i, xi in enumerate(x0)]
    momentum = [torch.zeros_like(xi) for xi in x]
    alpha = [cfg.alpha] * len(x)
    rising = [0] * len(x)
    last = [float("inf")] * len(x)
    for _ in range(cfg.iters):
        x = [xi.detach().requires_grad_(True) for xi in x]
        losses = (embed(x) - target).pow(2).sum(1) + cfg.vc_weight * torch.stack(
            [variance_consistency(xi, cfg.vc_kernel) for xi in x])
        grads = torch.autograd.grad(losses.sum(), x)
        lv = losses.detach()
        for i, g in enumerate(grads):
            momentum[i] = cfg.momentum * momentum[i] + _normalised_step(g)
            x[i] = (x[i].detach() - momentum[i] * alpha[i]).clamp(0, 1)
            if float(lv[i]) > last[i]:
                rising[i] += 1
                if rising[i] == cfg.decay_after:
                    alpha[i], rising[i] = alpha[i] * cfg.decay, 0
            last[i] = float(lv[i])
    return [_to_bgr(xi) for xi in x]


def apply_comparison(name: str, reid: torch.nn.Module, crops_bgr: Sequence[np.ndarray],
                     params: dict[str, Any] | None = None, progress: bool = False,
                     batch_size: int = 32) -> list[np.ndarray]:
    """Protect each uint8 BGR crop with PixelFade or AVIH under the authorization model ``reid`` (or an anonymiser).

    ``params`` override the method's config fields (e.g. ``{"iters": 30}``). Crop sizes are kept;
    crop i gets seed ``seed + i`` and crops are optimised independently (the model is in eval mode), so
    the result does not depend on the batching.
    """
    import dataclasses

    if name not in COMPARISONS:
        raise ValueError(f"unknown comparison method {name!r}; expected one of {COMPARISONS}")
    if name not in ITERATIVE:   # a trained anonymiser: only ``checkpoint`` applies (``iters`` is ignored)
        from latent_rag_ros.eval.anonymisers import apply_anonymiser

        return apply_anonymiser(name, crops_bgr, {k: v for k, v in (params or {}).items() if k == "checkpoint"})
    cls, fn = (PixelFadeConfig, pixelfade) if name == "pixelfade" else (AVIHConfig, avih)
    try:
        cfg = cls(**(params or {}))
    except TypeError as exc:
        raise ValueError(f"{name}: bad parameter ({exc}); fields: {[f.name for f in dataclasses.fields(cls)]}") \
            from None
    for i, img in enumerate(crops_bgr):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise ValueError(f"crop {i}: expected uint8 HxWx3, got {getattr(img, 'shape', type(img))}")
    starts: Sequence[int] = range(0, len(crops_bgr), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=name, unit="batch", leave=False, disable=None)
    out: list[np.ndarray] = []
    was_training = reid.training
    reid.eval()
    try:
        for s in starts:
            out += fn(reid, list(crops_bgr[s:s + batch_size]), dataclasses.replace(cfg, seed=cfg.seed + s))
    finally:
        reid.train(was_training)
    return out
