"""What every StyleGAN generator shares: the equalized-lr linear layer, the mapping network, ``Generator``.

``Generator`` is the base of the StyleGAN2 and StyleGAN3 generators (as in NVlabs, where both
network files define one): the recorded constructor kwargs, the mapping network (Z + label to W+,
``num_ws`` rows), the synthesis network the subclass names, and the common ``forward`` / ``w_avg``
/ image-size API. Parameter and buffer names equal the official ones (``mapping.fc0.weight``, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from latent_rag_ros.models.stylegan.ops import bias_act, normalize_2nd_moment


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


class Generator(nn.Module):
    """Base generator: ``synthesis`` (W+ to image, built by the subclass) and ``mapping`` (Z to W+).

    Signature as NVlabs' ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels,
    mapping_kwargs={}, **synthesis_kwargs)``; ``square=False`` (a synthesis kwarg) gives
    StyleGAN-Human's ``H x H/2`` images. Subclasses set ``family``, ``synthesis_class`` and
    ``mapping_defaults`` (kwargs that ``mapping_kwargs`` may override).
    """

    family: ClassVar[str] = ""
    synthesis_class: ClassVar[type[nn.Module]]
    mapping_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, **synthesis_kwargs))
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.square = bool(synthesis_kwargs.get("square", True))
        # Synthesis first, then mapping: the order NVlabs creates (and seeds) their parameters in.
        self.synthesis = self.synthesis_class(w_dim=w_dim, img_resolution=img_resolution,
                                              img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **{**self.mapping_defaults, **mapping_kwargs})
        self.img_height = self.img_resolution
        self.img_width = self.img_resolution if self.square else self.img_resolution // 2

    @property
    def config_name(self) -> str:
        """The architecture's name in generator files (the family unless a subclass is more precise)."""
        return self.family

    @property
    def w_avg(self) -> torch.Tensor:
        """The mapping network's tracked average W ``[w_dim]`` (the truncation centre)."""
        return self.mapping.w_avg

    def finish_image(self, img: torch.Tensor) -> torch.Tensor:
        """Post-process ``forward``'s synthesis output (identity here)."""
        return img

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
        img = self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, update_emas=update_emas)
        return self.finish_image(img)
