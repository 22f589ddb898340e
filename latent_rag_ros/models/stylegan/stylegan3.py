"""StyleGAN3 (alias-free) synthesis network and generator, configs T and R, in plain PyTorch.

A compact re-implementation of the architecture of NVlabs' ``training/networks_stylegan3.py``
(Fourier-feature input, modulated convolutions, filtered leaky ReLU with Kaiser/jinc low-pass
filters, critically sampled last layers). Parameter and buffer names equal the official ones, so
official state dicts copy 1:1 (``mapping.fc0.weight``, ``synthesis.input.freqs``,
``synthesis.L0_36_512.affine.weight``, ...). StyleGAN-Human's rectangular fork (``square=False``,
images ``H x H/2``) is supported. fp16 is used only on CUDA and only with ``force_fp32=False``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.models.stylegan import base
from latent_rag_ros.models.stylegan.base import FullyConnectedLayer
from latent_rag_ros.models.stylegan.ops import design_lowpass_filter, filtered_lrelu, modulated_conv2d_sg3


def _size_wh(size: int, square: bool) -> np.ndarray:
    """``[width, height]`` of a layer: square, or StyleGAN-Human's half-width rectangle."""
    return np.array([size, size]) if square else np.array([size // 2, size])


class SynthesisInput(nn.Module):
    """Fourier-feature input layer whose frequencies are rotated/translated by the first W."""

    def __init__(
        self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float, square: bool = True
    ) -> None:
        super().__init__()
        self.w_dim = int(w_dim)
        self.channels = int(channels)
        self.square = bool(square)
        self.size = _size_wh(int(size), self.square)
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth
        # Random frequencies drawn from a 2-D disc, and random phases.
        freqs = torch.randn([self.channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([self.channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([self.channels, self.channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))  # user-specified inverse transform
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Sample the Fourier features on the layer's grid: ``[B, channels, height, width]``."""
        transforms = self.transform.unsqueeze(0)
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0)

        t = self.affine(w)  # (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        one = torch.ones_like(t[:, 0])
        zero = torch.zeros_like(t[:, 0])
        m_r = torch.stack([torch.stack([t[:, 0], -t[:, 1], zero], 1),
                           torch.stack([t[:, 1], t[:, 0], zero], 1),
                           torch.stack([zero, zero, one], 1)], 1)  # inverse rotation
        m_t = torch.stack([torch.stack([one, zero, -t[:, 2]], 1),
                           torch.stack([zero, one, -t[:, 3]], 1),
                           torch.stack([zero, zero, one], 1)], 1)  # inverse translation
        transforms = m_r @ m_t @ transforms

        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        width, height = int(self.size[0]), int(self.size[1])
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * width / self.sampling_rate
        theta[1, 1] = 0.5 * height / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, height, width], align_corners=False)

        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [B,H,W,C]
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, channels={self.channels}, size={[int(v) for v in self.size]}, "
                f"sampling_rate={float(self.sampling_rate):g}, bandwidth={float(self.bandwidth):g}")


class SynthesisLayer(nn.Module):
    """Modulated conv + alias-free filtered leaky ReLU between two sampling rates (or ToRGB)."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        use_fp16: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: float,
        out_sampling_rate: float,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
        square: bool = True,
    ) -> None:
        super().__init__()
        self.w_dim = int(w_dim)
        self.is_torgb = bool(is_torgb)
        self.is_critically_sampled = bool(is_critically_sampled)
        self.use_fp16 = bool(use_fp16)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.square = bool(square)
        self.in_size = _size_wh(int(in_size), self.square)
        self.out_size = _size_wh(int(out_size), self.square)
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else int(conv_kernel)
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / self.in_sampling_rate))
        if self.in_sampling_rate * self.up_factor != self.tmp_sampling_rate:
            raise ValueError("sampling rates must be integer multiples of each other")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            numtaps=self.up_taps, cutoff=self.in_cutoff, width=self.in_half_width * 2, fs=self.tmp_sampling_rate))

        self.down_factor = int(np.rint(self.tmp_sampling_rate / self.out_sampling_rate))
        if self.out_sampling_rate * self.down_factor != self.tmp_sampling_rate:
            raise ValueError("sampling rates must be integer multiples of each other")
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        self.down_radial = bool(use_radial_filters and not self.is_critically_sampled)
        self.register_buffer("down_filter", design_lowpass_filter(
            numtaps=self.down_taps, cutoff=self.out_cutoff, width=self.out_half_width * 2,
            fs=self.tmp_sampling_rate, radial=self.down_radial))

        # Padding so that the output lands on the desired grid (symmetric interpretation).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Apply the layer to ``x [B, in_channels, in_h, in_w]`` with style vector ``w [B, w_dim]``."""
        if noise_mode not in ("random", "const", "none"):  # StyleGAN3 has no noise inputs
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        if update_emas:
            magnitude_cur = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude_cur.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()

        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * float(1 / np.sqrt(self.in_channels * (self.conv_kernel**2)))

        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        x = modulated_conv2d_sg3(x.to(dtype), self.weight, styles, padding=self.conv_kernel - 1,
                             demodulate=not self.is_torgb, input_gain=input_gain)
        gain = 1.0 if self.is_torgb else float(np.sqrt(2))
        slope = 1.0 if self.is_torgb else 0.2
        return filtered_lrelu(x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype),
                              up=self.up_factor, down=self.down_factor, padding=self.padding,
                              gain=gain, slope=slope, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"is_torgb={self.is_torgb}, critically_sampled={self.is_critically_sampled}, "
                f"in={self.in_channels}x{list(map(int, self.in_size))}@{float(self.in_sampling_rate):g}, "
                f"out={self.out_channels}x{list(map(int, self.out_size))}@{float(self.out_sampling_rate):g}, "
                f"up={self.up_factor}, down={self.down_factor}")


class SynthesisNetwork(nn.Module):
    """StyleGAN3 synthesis: input + ``num_layers`` layers + ToRGB; W+ ``[B, num_ws, w_dim]`` to image."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        square: bool = True,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.w_dim = int(w_dim)
        self.num_ws = int(num_layers) + 2
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.num_layers = int(num_layers)
        self.num_critical = int(num_critical)
        self.margin_size = int(margin_size)
        self.output_scale = float(output_scale)
        self.num_fp16_res = int(num_fp16_res)
        self.square = bool(square)
        if self.num_layers <= self.num_critical:
            raise ValueError("num_layers must exceed num_critical")

        # Geometric progression of cutoffs and minimum stopbands (f_c, f_t), then rates and sizes.
        last_cutoff = self.img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(self.num_layers + 1) / (self.num_layers - self.num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, self.img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + self.margin_size * 2
        sizes[-2:] = self.img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = self.img_channels

        self.input = SynthesisInput(w_dim=self.w_dim, channels=int(channels[0]), size=int(sizes[0]),
                                    sampling_rate=sampling_rates[0], bandwidth=cutoffs[0], square=self.square)
        self.layer_names: list[str] = []
        for idx in range(self.num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=self.w_dim, is_torgb=(idx == self.num_layers),
                is_critically_sampled=(idx >= self.num_layers - self.num_critical),
                use_fp16=bool(sampling_rates[idx] * (2**self.num_fp16_res) > self.img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx],
                square=self.square, **layer_kwargs)
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True, update_emas: bool = False
    ) -> torch.Tensor:
        """Render images ``[B, C, H, W]`` (about [-1, 1]) from W+ codes ``[B, num_ws, w_dim]``."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws_list = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws_list[0])
        for name, w in zip(self.layer_names, ws_list[1:]):
            x = getattr(self, name)(x, w, noise_mode=noise_mode, force_fp32=force_fp32, update_emas=update_emas)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)



class Generator(base.Generator):
    """StyleGAN3 generator: ``mapping`` (Z to W+, 2 layers by default) and ``synthesis`` (W+ to image).

    Config T is the default; config R is ``conv_kernel=1, use_radial_filters=True`` with doubled
    ``channel_base``/``channel_max``.
    """

    family = "stylegan3"
    synthesis_class = SynthesisNetwork
    mapping_defaults = {"num_layers": 2}

    @property
    def config_name(self) -> str:
        """``stylegan3-t`` or ``stylegan3-r`` (radial filters, 1x1 convolutions)."""
        radial = bool(self.init_kwargs.get("use_radial_filters", False))
        return "stylegan3-r" if radial or int(self.init_kwargs.get("conv_kernel", 3)) == 1 else "stylegan3-t"
