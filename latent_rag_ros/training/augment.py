"""Differentiable augmentation for GAN training on small data (DiffAugment-style), and x-flips.

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (2020): the same random
colour / translation / cutout transforms are applied to real AND generated images before the
discriminator, and gradients flow through them to the generator. Written here (not taken from a
library) because no installed package offers these ops with an explicit ``torch.Generator``, which
the trainers need so that a resumed run draws exactly the same random numbers as an uninterrupted one.
Images are ``[B, C, H, W]`` in about [-1, 1].
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """Split ``"color,translation,cutout"`` into names; '' / 'none' means no augmentation."""
    if policy is None or policy.strip().lower() in ("", "none"):
        return ()
    names = tuple(p.strip().lower() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {', '.join(POLICIES)}")
    return names


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=like.dtype).to(like.device)


def rand_brightness(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Add a per-image offset uniform in [-0.5, 0.5)."""
    return x + (_rand((x.shape[0], 1, 1, 1), gen, x) - 0.5)


def rand_saturation(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Scale each image's deviation from its grey value by a factor uniform in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), gen, x) * 2.0) + mean


def rand_contrast(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Scale each image's deviation from its mean by a factor uniform in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), gen, x) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125, gen: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by a random whole number of pixels (up to ``ratio`` of its size), zero-filled."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), generator=gen).to(x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), generator=gen).to(x.device)
    src_y = torch.arange(h, device=x.device).view(1, h, 1) - ty
    src_x = torch.arange(w, device=x.device).view(1, 1, w) - tx
    valid = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)
    return out * valid.unsqueeze(1).to(x.dtype)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zero one random rectangle of ``ratio`` x the image size per image (its centre anywhere inside)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=gen).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(
    x: torch.Tensor, policy: str | tuple[str, ...] = POLICIES, gen: torch.Generator | None = None,
    translation_ratio: float = 0.125, cutout_ratio: float = 0.5,
) -> torch.Tensor:
    """Apply the named augmentations in order (colour = brightness, saturation, contrast)."""
    names = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
    for name in names:
        if name == "color":
            x = rand_contrast(rand_saturation(rand_brightness(x, gen), gen), gen)
        elif name == "translation":
            x = rand_translation(x, translation_ratio, gen)
        elif name == "cutout":
            x = rand_cutout(x, cutout_ratio, gen)
        else:
            raise ValueError(f"unknown augmentation {name!r}")
    return x


def random_xflip(x: torch.Tensor, p: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (data augmentation of the real crops)."""
    if p <= 0:
        return x
    flip = (_rand((x.shape[0],), gen, x.float()) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
