"""Inverse self-attention-based augmentation (paper section III-C, eq. 3-5).

For every W+ layer independently, the m retrieved codes attend to each other with the element-wise
reciprocal of the scaled dot-product scores, so dissimilar codes get the larger weights; the m
attended codes are then averaged into one augmented code per layer.
"""

from __future__ import annotations

import math

import torch


def guarded_reciprocal(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Element-wise ``1 / x`` with a sign-preserving guard: ``|x| < eps`` becomes ``+-eps`` (0 -> +eps)."""
    sign = torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
    return 1.0 / (sign * x.abs().clamp_min(eps))


def inverse_attention_weights(
    latents: torch.Tensor, temperature: float = 1.0, scale: float | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """The inverse attention matrix A of eq. 4 for each layer: [B, L, m, m] (rows sum to 1)."""
    if latents.ndim != 4:
        raise ValueError(f"latents must be [B, m, L, C], got shape {tuple(latents.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    d = latents.shape[-1]
    scale = math.sqrt(d) if not scale else float(scale)
    x = latents.transpose(1, 2)                      # [B, L, m, C]: layer-wise Q = K = V
    s_attn = torch.matmul(x, x.transpose(-1, -2)) / scale   # eq. 3, (Q K^T) / D
    s = guarded_reciprocal(s_attn, eps)                      # eq. 3, S = 1 / S_attn
    return torch.softmax(s / temperature, dim=-1)            # eq. 4


def inverse_self_attention(
    latents: torch.Tensor, temperature: float = 1.0, scale: float | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Fuse retrieved W+ codes ``latents`` [B, m, L, C] into augmented codes w* [B, L, C].

    ``scale`` defaults to sqrt(C) (eq. 3); ``temperature`` divides the scores before the softmax
    (1 in the paper); ``eps`` guards the reciprocal near zero without flipping its sign.
    """
    a = inverse_attention_weights(latents, temperature, scale, eps)   # [B, L, m, m]
    x = latents.transpose(1, 2)                                       # [B, L, m, C]
    w_hat = torch.matmul(a, x)                                        # eq. 5, A V
    return w_hat.mean(dim=2)                                          # mean over the m codes
