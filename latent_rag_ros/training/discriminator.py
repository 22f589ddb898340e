"""A small residual discriminator for rectangular person images (the GAN trainer's D).

StyleGAN2-style "resnet" D, written small for CPU training: 1x1 from-RGB, residual blocks that halve
the resolution (skip branch scaled by 1/sqrt(2)), minibatch standard deviation, a 3x3 conv and two
dense layers. Layers use the equalized learning rate of Karras et al. (weights ~N(0,1), scaled by
1/sqrt(fan_in) at run time) so that Adam with StyleGAN's learning rates behaves as in the paper;
torch has no such layer, hence the few lines here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


class EqConv2d(nn.Module):
    """Conv2d with equalized learning rate (runtime weight scaling), 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the scaled weight."""
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.padding)


class EqLinear(nn.Module):
    """Linear layer with equalized learning rate."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.gain = 1.0 / math.sqrt(fin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affine map with the scaled weight."""
        return F.linear(x, self.weight * self.gain, self.bias)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with StyleGAN's sqrt(2) gain."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class DBlock(nn.Module):
    """Two 3x3 convs then 2x average-pool, plus a pooled 1x1 skip; output scaled by 1/sqrt(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the resolution."""
        y = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (y + self.skip(F.avg_pool2d(x, 2))) * (1.0 / math.sqrt(2.0))


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the std over groups of images, averaged over features (more sample diversity)."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = x.reshape(g, b // g, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()
    y = y.mean(dim=(1, 2, 3)).reshape(1, b // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class ResNetDiscriminator(nn.Module):
    """Residual D: image ``[B, C, H, W]`` in about [-1, 1] -> realism logit ``[B, 1]``.

    Halves the resolution until the short side is ``final_size`` px (64x32 inputs: 4 blocks down to a
    4x2 map); block widths are ``min(channel_base / short_side, channel_max)``.
    """

    def __init__(self, img_height: int, img_width: int, img_channels: int = 3, channel_base: int = 2048,
                 channel_max: int = 128, final_size: int = 2, mbstd_group: int = 4) -> None:
        super().__init__()
        self.img_height, self.img_width, self.img_channels = int(img_height), int(img_width), int(img_channels)
        self.mbstd_group = int(mbstd_group)
        short = min(self.img_height, self.img_width)
        if short < final_size or short & (short - 1) or max(self.img_height, self.img_width) % short:
            raise ValueError(f"image size {img_height}x{img_width}: the short side must be a power of two "
                             f">= {final_size} dividing the long side")

        def width(side: int) -> int:
            return int(min(max(channel_base // side, 8), channel_max))

        self.fromrgb = EqConv2d(self.img_channels, width(short), 1)
        blocks = []
        side = short
        while side > final_size:
            blocks.append(DBlock(width(side), width(side // 2)))
            side //= 2
        self.blocks = nn.Sequential(*blocks)
        cout = width(side)
        self.conv = EqConv2d(cout + 1, cout, 3)
        fh, fw = self.img_height * side // short, self.img_width * side // short
        self.fc = EqLinear(cout * fh * fw, cout)
        self.out = EqLinear(cout, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Realism logits ``[B, 1]``."""
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, self.img_height, self.img_width):
            raise ValueError(f"expected [B, {self.img_channels}, {self.img_height}, {self.img_width}] images, "
                             f"got {tuple(img.shape)}")
        x = self.blocks(lrelu(self.fromrgb(img)))
        x = lrelu(self.conv(minibatch_std(x, self.mbstd_group)))
        return self.out(lrelu(self.fc(x.flatten(1))))
