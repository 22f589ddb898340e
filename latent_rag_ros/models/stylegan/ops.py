"""StyleGAN ops in plain PyTorch: bias_act, upfirdn2d, conv2d_resample, filtered lrelu, modulated convs.

The arithmetic of NVlabs' ``torch_utils/ops`` (and the modulated convolutions of their network
files), shared by :mod:`.stylegan2` and :mod:`.stylegan3`. The official code runs resampling and
activation through CUDA plugins whose CPU fallback is a slow "reference" path. No maintained library
provides ``upfirdn2d`` (torchvision and kornia have no zero-insertion FIR resampler with NVlabs'
padding convention) or ``filtered_lrelu``, so they are written here with standard
``torch.nn.functional`` ops (strided and transposed depthwise convs): exact in fp32 on CPU up to
summation order, differentiable, and usable on CUDA as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)

# Default gain and slope of the activations NVlabs' ``bias_act`` offers that these generators use.
ACT_DEFAULTS: dict[str, tuple[float, float]] = {  # name -> (default gain, default alpha)
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
    if act not in ACT_DEFAULTS:
        raise ValueError(f"unsupported activation {act!r} (supported: {sorted(ACT_DEFAULTS)})")
    def_gain, def_alpha = ACT_DEFAULTS[act]
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
# Modulated convolutions and the alias-free activation


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


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = float(np.sqrt(2)),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias, upsample with ``fu``, leaky ReLU (times ``gain``, clamped), downsample with ``fd``.

    Same result as NVlabs ``filtered_lrelu`` (its reference path); ``padding`` is
    ``[x0, x1, y0, y1]`` w.r.t. the upsampled signal.
    """
    if b is not None:
        x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=list(padding), gain=up**2)
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)


def modulated_conv2d_sg3(
    x: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleGAN3 modulated convolution (pre-normalised weights/styles, optional input gain)."""
    batch = int(x.shape[0])
    _, in_channels, kh, kw = w.shape
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        input_gain = input_gain.expand(batch, in_channels)
        w = w * input_gain.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = F.conv2d(x, w.to(x.dtype), padding=padding, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass FIR (separable 1-D, or radially symmetric jinc 2-D); None if 1 tap."""
    if numtaps < 1:
        raise ValueError("numtaps must be >= 1")
    if numtaps == 1:
        return None
    if not radial:
        f = scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    win = np.kaiser(numtaps, beta)
    f *= np.outer(win, win)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)
