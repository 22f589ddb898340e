"""StyleGAN2 / StyleGAN2-ADA synthesis network and generator (NVlabs architecture) in plain PyTorch.

Parameter and buffer names equal NVlabs' ``training/networks_stylegan2.py`` (stylegan3 repository)
and ``training/networks.py`` (stylegan2-ada-pytorch), so their state dicts copy 1:1
(``mapping.fc0.weight``, ``synthesis.b4.const``, ``synthesis.b8.conv0.noise_const``, ...).
StyleGAN-Human's rectangular variant (``square=False``: images ``H x H/2``) is supported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.models.stylegan import base
from latent_rag_ros.models.stylegan.base import FullyConnectedLayer
from latent_rag_ros.models.stylegan.ops import (
    ACT_DEFAULTS,
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    setup_filter,
    upsample2d,
)


class Conv2dLayer(nn.Module):
    """Plain equalized-lr convolution with optional resampling (the 'resnet' skip path)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.activation = activation
        self.up = int(up)
        self.down = int(down)
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size**2))
        self.act_gain = ACT_DEFAULTS[activation][0]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """Convolve, resample, add bias and activate."""
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution with per-pixel noise, bias and leaky ReLU (optionally 2x up)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        channels_last: bool = False,
        square: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.square = bool(square)
        self.up = int(up)
        self.use_noise = bool(use_noise)
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACT_DEFAULTS[activation][0]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, self.width]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    @property
    def width(self) -> int:
        """Output width (half the resolution for StyleGAN-Human's rectangular images)."""
        return self.resolution if self.square else self.resolution // 2

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", fused_modconv: bool = True,
        gain: float = 1.0,
    ) -> torch.Tensor:
        """Apply the layer to features ``x`` with the style vector ``w [B, w_dim]``."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.width], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution (no demodulation) from features to image channels."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
        conv_clamp: float | None = None, channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size**2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """Project features to an image contribution."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the StyleGAN2 synthesis network (const or conv0, conv1, torgb/skip)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = 256,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        fused_modconv_default: bool | str = True,
        square: bool = True,
        **layer_kwargs: Any,
    ) -> None:
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = int(in_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.img_channels = int(img_channels)
        self.is_last = bool(is_last)
        self.architecture = architecture
        self.use_fp16 = bool(use_fp16)
        self.square = bool(square)
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        width = resolution if square else resolution // 2
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, width]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, square=square,
                                        **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, square=square, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = True,
        fused_modconv: bool | None = None,
        noise_mode: str = "const",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the block on features ``x`` and the running image ``img`` with its slice of ``ws``."""
        w_iter = iter(ws.unbind(dim=1))
        use_half = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
            if fused_modconv == "inference_only":
                fused_modconv = not self.training
            fused_modconv = bool(fused_modconv)

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = x.to(dtype)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=float(np.sqrt(0.5)),
                           noise_mode=noise_mode)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)

        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis: blocks ``b4 ... b{img_resolution}``; W+ ``[B, num_ws, w_dim]`` to image."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        square: bool = True,
        **block_kwargs: Any,
    ) -> None:
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = int(img_channels)
        self.num_fp16_res = int(num_fp16_res)
        self.square = bool(square)
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=(res >= fp16_resolution),
                                   square=square, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "const",
        force_fp32: bool = True,
        fused_modconv: bool | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Render images ``[B, C, H, W]`` (about [-1, 1]) from W+ codes ``[B, num_ws, w_dim]``."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode)
        return img



class Generator(base.Generator):
    """StyleGAN2(-ADA) generator: ``mapping`` (Z to W+) and ``synthesis`` (W+ to image).

    ``padding=True`` (StyleGAN-Human) pads ``forward`` outputs to a square with white, as theirs.
    """

    family = "stylegan2"
    synthesis_class = SynthesisNetwork

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        padding: bool = False,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, **synthesis_kwargs)
        self.init_kwargs["padding"] = padding
        self.padding = bool(padding)

    def finish_image(self, img: torch.Tensor) -> torch.Tensor:
        """StyleGAN-Human's ``padding``: a rectangular image padded to a square with white."""
        if self.padding and img.shape[2] > img.shape[3]:
            pad = (img.shape[2] - img.shape[3]) // 2
            img = F.pad(img, (pad, pad), "constant", 1.0)
        return img
