"""Small random-weight networks for tests (no pretrained weights exist offline).

``TinyReID`` stands in for a re-ID encoder where a full ResNet/MobileNet would only slow the test
down; it follows the ReIDEncoder contract of docs/design.md (resize + normalise inside forward,
L2-normalised output). Real re-ID architectures are tested in test_reid.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyReID(nn.Module):
    """A 3-layer CNN embedding, input 64x32, output ``dim``-d, L2-normalised."""

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.dim = dim
        self.name = "tiny_reid"
        self.input_size = (64, 32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        x = (x - 0.45) / 0.25
        return F.normalize(self.body(x).mean(dim=(2, 3)), dim=1)
