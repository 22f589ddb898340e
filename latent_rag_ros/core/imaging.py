"""Conversions between OpenCV crops (uint8 BGR HxWx3) and the library's tensors (float RGB NCHW in [0, 1])."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def bgr_to_tensor(
    crops: Sequence[np.ndarray], size: tuple[int, int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Resize each BGR uint8 crop to ``size`` = (H, W) and stack as float RGB [B,3,H,W] in [0, 1].

    Resizing uses OpenCV's area filter when shrinking and bilinear when enlarging, so a batch is a
    stack of independently prepared images (batch and one-by-one results agree).
    """
    h, w = size
    out = np.empty((len(crops), h, w, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        check_image(crop, f"crop {i}")
        interp = cv2.INTER_AREA if crop.shape[0] >= h and crop.shape[1] >= w else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (w, h), interpolation=interp)
        out[i] = resized[:, :, ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(device)


def tensor_to_bgr(images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Turn [B,3,H,W] in [0, 1] into uint8 BGR images, each resized to ``sizes[i]`` = (H, W) if given."""
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    out = []
    for i, img in enumerate(arr):
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        if sizes is not None:
            h, w = sizes[i]
            if (h, w) != bgr.shape[:2]:
                interp = cv2.INTER_AREA if h <= bgr.shape[0] and w <= bgr.shape[1] else cv2.INTER_LINEAR
                bgr = cv2.resize(bgr, (w, h), interpolation=interp)
        out.append(bgr)
    return out


def from_generator(images: torch.Tensor) -> torch.Tensor:
    """Map generator output (about [-1, 1]) to [0, 1] (clamped; the gradient passes inside the range)."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def check_image(img: np.ndarray, what: str = "image") -> None:
    """Raise ValueError unless ``img`` is a non-empty uint8 HxWx3 array."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"{what}: expected uint8 HxWx3 BGR, got shape {shape} dtype {dtype}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"{what}: too small ({img.shape[1]}x{img.shape[0]})")
