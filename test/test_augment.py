"""Inverse self-attention (eq. 3-5) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latent_rag_ros.core.augment import guarded_reciprocal, inverse_attention_weights, inverse_self_attention


def test_guarded_reciprocal_preserves_sign_near_zero() -> None:
    x = torch.tensor([0.0, 1e-9, -1e-9, 2.0, -4.0, 1e-3])
    got = guarded_reciprocal(x, eps=1e-6)
    want = torch.tensor([1e6, 1e6, -1e6, 0.5, -0.25, 1e3])
    assert torch.allclose(got, want, rtol=1e-6)


def test_two_codes_hand_computed() -> None:
    # One layer, m=2, d=2: x1=(1,0), x2=(1,1).  S_attn = X X^T / sqrt(2) = [[1,1],[1,2]]/sqrt(2)
    # S = 1/S_attn = [[r2, r2], [r2, r2/2]]; row softmax; W_hat = A X; w* = mean over rows.
    r2 = math.sqrt(2.0)
    a0 = np.array([0.5, 0.5])
    e = np.exp([r2, r2 / 2])
    a1 = e / e.sum()
    x = np.array([[1.0, 0.0], [1.0, 1.0]])
    want = ((a0 @ x) + (a1 @ x)) / 2
    lat = torch.tensor(x, dtype=torch.float64).view(1, 2, 1, 2)  # [B=1, m=2, L=1, C=2]
    got = inverse_self_attention(lat)
    assert got.shape == (1, 1, 2)
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=1e-12)
    # Inverse attention favours the dissimilar code: row 1 (x2) weighs x1 more than itself.
    a = inverse_attention_weights(lat)[0, 0]
    assert a[1, 0] > a[1, 1]


def test_orthogonal_codes_hit_the_guard() -> None:
    # Orthogonal codes give S_attn = 0 off the diagonal: the guard turns it into +1/eps, so each
    # row puts (almost) all weight on the OTHER code.
    lat = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    a = inverse_attention_weights(lat, eps=1e-3)[0, 0]
    assert torch.allclose(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6)
    assert torch.isfinite(inverse_self_attention(lat, eps=1e-3)).all()


def test_scale_and_temperature_options() -> None:
    torch.manual_seed(0)
    lat = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    x = lat[1, :, 2]  # sample 1, layer 2: [m, C]
    for scale, temp in [(None, 1.0), (1.0, 1.0), (4.0, 0.5)]:
        s_attn = x @ x.T / (scale or math.sqrt(8))
        s = 1.0 / s_attn
        a = torch.softmax(s / temp, dim=-1)
        want = (a @ x).mean(0)
        got = inverse_self_attention(lat, temperature=temp, scale=scale)[1, 2]
        assert torch.allclose(got, want, atol=1e-10), (scale, temp)


def test_layers_are_independent_and_shapes() -> None:
    torch.manual_seed(1)
    lat = torch.randn(3, 5, 4, 16)
    out = inverse_self_attention(lat)
    assert out.shape == (3, 4, 16)
    lat2 = lat.clone()
    lat2[:, :, 3] += 5.0
    out2 = inverse_self_attention(lat2)
    assert torch.equal(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3], out2[:, 3])
    with pytest.raises(ValueError):
        inverse_self_attention(torch.randn(4, 3, 16))
