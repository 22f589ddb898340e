"""StyleGAN2 / StyleGAN2-ADA generator (NVlabs architecture) in plain PyTorch, plus shared layers.

Parameter and buffer names equal NVlabs' ``training/networks_stylegan2.py`` (stylegan3 repository)
and ``training/networks.py`` (stylegan2-ada-pytorch), so their state dicts copy 1:1
(``mapping.fc0.weight``, ``synthesis.b4.const``, ``synthesis.b8.conv0.noise_const``, ...).
StyleGAN-Human's rectangular variant (``square=False``: images ``H x H/2``) is supported too.

The official code runs its resampling and activation through CUDA plugins whose CPU fallback is a
slow "reference" path. There is no maintained library that provides ``upfirdn2d`` (torchvision and
kornia have no zero-insertion FIR resampler with NVlabs' padding convention), so that arithmetic is
written here with standard ``torch.nn.functional`` ops (strided and transposed depthwise convs):
exact in fp32 on CPU up to summation order, differentiable, and usable on CUDA as well.
``FullyConnectedLayer``, ``MappingNetwork`` and ``upfirdn2d`` are shared with :mod:`latent_rag_ros.models.stylegan3`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)

# Default gain and slope of the activations NVlabs' ``bias_act`` offers that these generators use.
_ACT_DEFAULTS: dict[str, tuple[float, float]] = {  # name -> (default gain, default alpha)
    "linear": (1.0, 0.0),
    "relu": (SQRT2, 0.0),
    "lrelu": (SQRT2, 0.2),
}


# ------------------------------------------------------------------------------------------------
# Elementwise ops


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add bias, apply activation, scale by gain and clamp: NVlabs ``bias_act`` semantics."""
    if act not in _ACT_DEFAULTS:
        raise ValueError(f"unsupported activation {act!r} (supported: {sorted(_ACT_DEFAULTS)})")
    def_gain, def_alpha = _ACT_DEFAULTS[act]
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    a = float(alpha if alpha is not None else def_alpha)
    if act == "lrelu":
        x = F.leaky_relu(x, a)
    elif act == "relu":
        x = F.relu(x)
    g = float(gain if gain is not None else def_gain)
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root-mean-square (input normalisation of the mapping network)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ------------------------------------------------------------------------------------------------
# FIR resampling (upfirdn2d)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _padding4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(v) for v in padding]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) != 4:
        raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding!r}")
    return p[0], p[1], p[2], p[3]


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Width and height of a FIR filter (``None`` is the 1x1 identity)."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(
    f: Any, normalize: bool = True, flip_filter: bool = False, gain: float = 1.0, separable: bool | None = None
) -> torch.Tensor:
    """Build the float32 FIR filter buffer NVlabs stores (``[1,3,3,1]`` becomes a normalised 4x4)."""
    t = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if t.ndim == 0:
        t = t[None]
    if t.ndim not in (1, 2) or t.numel() == 0:
        raise ValueError("filter must be a non-empty 1-D or 2-D array")
    if separable is None:
        separable = t.ndim == 1 and t.numel() >= 8
    if t.ndim == 1 and not separable:
        t = torch.outer(t, t)
    if normalize:
        t = t / t.sum()
    if flip_filter:
        t = t.flip(list(range(t.ndim)))
    return t * (gain ** (t.ndim / 2))


def _pad_axes(x: torch.Tensor, pads: dict[int, tuple[int, int]]) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) dims 2 (height) and 3 (width) of an NCHW tensor."""
    w0, w1 = pads.get(3, (0, 0))
    h0, h1 = pads.get(2, (0, 0))
    if w0 == w1 == h0 == h1 == 0:
        return x
    return F.pad(x, [w0, w1, h0, h1])


def _fir(x: torch.Tensor, g: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
         pad: dict[int, tuple[int, int]]) -> torch.Tensor:
    """One depthwise FIR pass with correlation taps ``g`` (``[kh, kw]``); ``up``/``down`` are (y, x)."""
    channels = x.shape[1]
    kh, kw = int(g.shape[0]), int(g.shape[1])
    if up == (1, 1):
        x = _pad_axes(x, pad)
        return F.conv2d(x, g[None, None].expand(channels, 1, kh, kw), stride=down, groups=channels)
    # Zero insertion followed by the FIR equals a strided transposed convolution with the
    # reversed taps; then crop/pad so the samples line up with the zero-insertion layout.
    in_h, in_w = x.shape[2], x.shape[3]
    y = F.conv_transpose2d(x, g.flip([0, 1])[None, None].expand(channels, 1, kh, kw), stride=up, groups=channels)
    crops: dict[int, tuple[int, int]] = {}
    for dim, length, k, u in ((2, in_h, kh, up[0]), (3, in_w, kw, up[1])):
        p0, p1 = pad.get(dim, (0, 0))
        off = k - 1 - p0
        wanted = length * u + p0 + p1 - k + 1
        crops[dim] = (-off, wanted + off - y.shape[dim])
    y = _pad_axes(y, crops)
    if down != (1, 1):
        y = y[:, :, ::down[0], ::down[1]]
    return y


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample each channel of ``x``.

    Same semantics as NVlabs ``upfirdn2d`` (padding ``[x0, x1, y0, y1]`` is w.r.t. the upsampled
    image; negative padding crops; ``f`` is 2-D, or 1-D for a separable filter applied
    horizontally then vertically). Zero insertion is done as a strided transposed convolution and
    downsampling as a strided convolution, so no work is spent on the inserted zeros or on the
    discarded samples; the results equal NVlabs' reference path up to float summation order.
    """
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.ndim not in (1, 2):
        raise ValueError("upfirdn2d: filter must be 1-D (separable) or 2-D")
    out_w = x.shape[3] * upx + px0 + px1
    out_h = x.shape[2] * upy + py0 + py1
    if out_w < f.shape[-1] or out_h < f.shape[0]:
        raise ValueError("upfirdn2d: padded input is smaller than the filter")

    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # NVlabs convolves (flipped taps); conv2d correlates
        f = f.flip(list(range(f.ndim)))

    if f.numel() == 1 and upx == upy == 1:  # 1-tap filter: pad/crop, scale, subsample
        scale = f.reshape([]) if f.ndim == 2 else f.reshape([]).square()  # separable: applied twice
        x = _pad_axes(x, {3: (px0, px1), 2: (py0, py1)}) * scale
        return x[:, :, ::downy, ::downx]
    if f.ndim == 1:
        x = _fir(x, f[None, :], (1, upx), (1, downx), {3: (px0, px1)})
        return _fir(x, f[:, None], (upy, 1), (downy, 1), {2: (py0, py1)})
    return _fir(x, f, (upy, upx), (downy, downx), {3: (px0, px1), 2: (py0, py1)})


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 2, gain: float = 1.0) -> torch.Tensor:
    """Upsample by ``up`` with FIR filter ``f``; output is exactly ``up`` times the input size."""
    fw, fh = filter_size(f)
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def _conv2d_wrapper(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling, following NVlabs' op order exactly."""
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        # Transposed strided convolution, then the FIR filter (cheaper than zero insertion + conv).
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d_wrapper(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                            flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


# ------------------------------------------------------------------------------------------------
# Layers shared by StyleGAN2 and StyleGAN3


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalized learning rate (runtime weight gain) and optional activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.weight_gain = float(lr_multiplier / np.sqrt(in_features))
        self.bias_gain = float(lr_multiplier)
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        if bias:
            init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
            self.bias = nn.Parameter(torch.from_numpy(init / np.float32(lr_multiplier)))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``x @ (W*gain)^T + b*bias_gain`` then the activation."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """Z (+ label) to W mapping MLP, broadcast to ``num_ws`` copies, with tracked ``w_avg``."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
        freeze_layers: int = 0,
        freeze_embed: bool = False,
    ) -> None:
        super().__init__()
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.num_ws = None if num_ws is None else int(num_ws)
        self.num_layers = int(num_layers)
        self.w_avg_beta = w_avg_beta
        # Freezing only changes which tensors the NVlabs trainer updates; names stay the same.
        self.freeze_layers = int(freeze_layers)
        self.freeze_embed = bool(freeze_embed)
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))
        else:
            self.w_avg = None

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Map ``z [B, z_dim]`` (and labels ``c``) to W+ ``[B, num_ws, w_dim]`` with truncation."""
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [B, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator is conditional: c must have shape [B, {self.c_dim}]")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        if x is None:
            raise ValueError("mapping network has neither z nor c inputs")
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg is None:
                raise ValueError("truncation needs w_avg, which this mapping network does not track")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                cut = int(truncation_cutoff)
                x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ------------------------------------------------------------------------------------------------
# StyleGAN2 synthesis


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated (and demodulated) convolution of a batch with per-sample styles."""
    batch = int(x.shape[0])
    _, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalise to avoid fp16 overflow
        weight = weight * (1 / np.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


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
        self.act_gain = _ACT_DEFAULTS[activation][0]
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
        self.act_gain = _ACT_DEFAULTS[activation][0]
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


class Generator(nn.Module):
    """StyleGAN2(-ADA) generator: ``mapping`` (Z to W+) and ``synthesis`` (W+ to image).

    Signature as NVlabs' ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels,
    mapping_kwargs={}, **synthesis_kwargs)``; ``square=False`` gives StyleGAN-Human's ``H x H/2``.
    ``padding=True`` (StyleGAN-Human) pads ``forward`` outputs to a square with white, as theirs.
    """

    family = "stylegan2"

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
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, padding=padding, **synthesis_kwargs))
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.square = bool(synthesis_kwargs.get("square", True))
        self.padding = bool(padding)
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)
        self.img_height = self.img_resolution
        self.img_width = self.img_resolution if self.square else self.img_resolution // 2

    @property
    def w_avg(self) -> torch.Tensor:
        """The mapping network's tracked average W ``[w_dim]`` (the truncation centre)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        force_fp32: bool = True,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Generate images from latents ``z [B, z_dim]``."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        img = self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
        if self.padding and img.shape[2] > img.shape[3]:
            pad = (img.shape[2] - img.shape[3]) // 2
            img = F.pad(img, (pad, pad), "constant", 1.0)
        return img
