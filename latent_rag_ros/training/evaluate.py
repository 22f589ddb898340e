"""Encode -> regenerate quality on held-out crops (mean SSIM, L1, PSNR) and image grids for model cards."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from latent_rag_ros.core.imaging import from_generator
from latent_rag_ros.fileio import atomic_write
from latent_rag_ros.training.losses import ssim_per_image, ssim_window


@torch.no_grad()
def encode_regenerate(generator: torch.nn.Module, encoder: torch.nn.Module, images01: torch.Tensor,
                      batch: int = 32) -> torch.Tensor:
    """``G.synthesis(E(x))`` mapped to [0, 1], for images ``[N, 3, H, W]`` in [0, 1]."""
    device = next(generator.parameters()).device
    out = []
    for s in range(0, images01.shape[0], batch):
        x = images01[s: s + batch].to(device)
        out.append(from_generator(generator.synthesis(encoder(x), noise_mode="const")).cpu())
    return torch.cat(out) if out else images01[:0]


def reconstruction_report(generator: torch.nn.Module, encoder: torch.nn.Module, images01: torch.Tensor,
                          batch: int = 32) -> tuple[dict[str, Any], torch.Tensor]:
    """Per-image SSIM / L1 / PSNR of encode -> regenerate against the inputs (at the generator's size).

    SSIM is pytorch-msssim's (Gaussian window 11, sigma 1.5, data range 1) on RGB in [0, 1]; inputs of
    another size are resized (bilinear, antialiased) to the generator's first.
    """
    size = (int(generator.img_height), int(generator.img_width))
    target = images01.float()
    if tuple(target.shape[-2:]) != size:
        target = F.interpolate(target, size=size, mode="bilinear", align_corners=False, antialias=True)
    rec = encode_regenerate(generator, encoder, target, batch)
    s = ssim_per_image(rec, target, ssim_window(*size))
    mse = (rec - target).square().mean(dim=(1, 2, 3))
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
    report = {
        "n": int(target.shape[0]), "size": list(size), "ssim_window": ssim_window(*size),
        "ssim_mean": float(s.mean()), "ssim_median": float(s.median()), "ssim_std": float(s.std()) if len(s) > 1
        else 0.0, "ssim_min": float(s.min()), "ssim_max": float(s.max()),
        "l1_mean": float((rec - target).abs().mean()), "psnr_mean": float(psnr.mean()),
    }
    if not all(math.isfinite(v) for v in report.values() if isinstance(v, float)):
        raise RuntimeError("reconstruction metrics are not finite")
    return report, rec


def image_grid(rows: list[torch.Tensor], pad: int = 2, scale: int = 2) -> np.ndarray:
    """Stack rows of images ``[n, 3, H, W]`` in [0, 1] into one BGR uint8 picture (white gaps)."""
    if not rows:
        raise ValueError("no rows")
    n = max(int(r.shape[0]) for r in rows)
    h, w = int(rows[0].shape[2]), int(rows[0].shape[3])
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        arr = (row.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        for j, img in enumerate(arr):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y: y + h, x: x + w] = img[:, :, ::-1]
    if scale > 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return canvas


def save_png(path: str | os.PathLike, bgr: np.ndarray) -> Path:
    """Write a PNG (atomically); returns its path."""
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
