"""Conventional protection baselines of the paper's tables: none, Gaussian blur and mosaic (OpenCV).

The paper uses PixelFade's default settings, which PixelFade's public code does not ship (its
repository holds only the PixelFade method and the recovery attack). We therefore use common
settings defined at the 256x128 re-ID resolution and scaled with each crop's height so a
128x64 Market-1501 crop is treated like its 256x128 upsampled version:

* ``blur``: Gaussian kernel 21x21, sigma 7 at height 256 (kernel 11, sigma 3.5 at height 128);
* ``mosaic``: 8x8-pixel blocks at height 256 (4x4 at height 128), block mean via area
  down-sampling then nearest-neighbour up-sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

REFERENCE_HEIGHT = 256
BLUR_KERNEL = 21
BLUR_SIGMA = 7.0
MOSAIC_BLOCK = 8
BASELINES = ("none", "blur", "mosaic")


def _scale(img: np.ndarray) -> float:
    return img.shape[0] / REFERENCE_HEIGHT


def gaussian_blur(img: np.ndarray, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA,
                  scale_with_size: bool = True) -> np.ndarray:
    """Gaussian blur; kernel and sigma are given at height 256 and scaled with the crop height."""
    s = _scale(img) if scale_with_size else 1.0
    k = max(3, round(kernel * s))
    k += 1 - k % 2  # odd
    return cv2.GaussianBlur(img, (k, k), sigmaX=max(0.3, sigma * s), borderType=cv2.BORDER_REFLECT_101)


def mosaic(img: np.ndarray, block: int = MOSAIC_BLOCK, scale_with_size: bool = True) -> np.ndarray:
    """Pixelate into blocks of ``block`` pixels (at height 256, scaled with the crop height)."""
    h, w = img.shape[:2]
    b = max(1, round(block * (_scale(img) if scale_with_size else 1.0)))
    small = cv2.resize(img, (max(1, -(-w // b)), max(1, -(-h // b))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def no_protection(img: np.ndarray) -> np.ndarray:
    """The unprotected image (a copy): the "w/o protection" row."""
    return img.copy()


_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "none": no_protection,
    "blur": gaussian_blur,
    "mosaic": mosaic,
}


def apply_baseline(name: str, crops_bgr: Sequence[np.ndarray], **params: Any) -> list[np.ndarray]:
    """Protect each uint8 BGR crop with baseline ``name`` (none / blur / mosaic); sizes are kept.

    ``params`` go to the baseline: ``kernel``/``sigma`` (blur), ``block`` (mosaic),
    ``scale_with_size`` (both).
    """
    if name not in _FUNCS:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    if name == "none" and params:
        raise ValueError("the 'none' baseline takes no parameters")
    out = []
    for i, img in enumerate(crops_bgr):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise ValueError(f"crop {i}: expected uint8 HxWx3, got {getattr(img, 'shape', type(img))}")
        out.append(_FUNCS[name](img, **params))
    return out
