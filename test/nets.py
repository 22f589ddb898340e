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


def tiny_stylegan3() -> nn.Module:
    """The project's StyleGAN3 at 32x16 with random weights (seed 0), in eval mode, frozen."""
    from latent_rag_ros.models.stylegan3 import Generator

    torch.manual_seed(0)
    return Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs={"num_layers": 2},
                     channel_base=32 * 32, channel_max=32, num_layers=4, num_critical=1, margin_size=2,
                     square=False).eval().requires_grad_(False)


def loop_inputs(g: nn.Module, reid: nn.Module, b: int = 3, seed: int = 1):
    """Random w [b,L,C] from G's mapping, target images [b,3,H,W] and an L2-normalised f of other images."""
    rng = torch.Generator().manual_seed(seed)
    w = g.mapping(torch.randn(b, g.z_dim, generator=rng)).detach()
    images = torch.rand(b, 3, g.img_height, g.img_width, generator=rng)
    with torch.no_grad():
        f = reid(torch.rand(b, 3, g.img_height, g.img_width, generator=rng))
    return w, images, F.normalize(f, dim=1)
