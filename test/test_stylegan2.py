"""StyleGAN2(-ADA) generator and the shared FIR ops: names, shapes, noise modes, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from latent_rag_ros.models.generator_io import build_generator, normalize_init_kwargs
from latent_rag_ros.models.stylegan2 import conv2d_resample, setup_filter, upfirdn2d, upsample2d

from helpers_nvlabs import make_small_generator


def _scipy_upfirdn2d(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: list[int], gain: float) -> np.ndarray:
    """Independent reference: zero insertion, pad/crop, true 2-D convolution, subsampling."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    px0, px1, py0, py1 = pad
    z = np.pad(z, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[max(-py0, 0): z.shape[0] - max(-py1, 0), max(-px0, 0): z.shape[1] - max(-px1, 0)]
    k = np.outer(f, f) if f.ndim == 1 else f
    return scipy.signal.convolve2d(z, k * gain, mode="valid")[::down, ::down]


@pytest.mark.parametrize("up,down,pad,taps,separable", [
    (1, 1, [1, 2, 0, 3], 4, False), (2, 1, [2, 1, 2, 1], 4, False), (2, 1, [9, 8, 9, 8], 12, True),
    (4, 1, [-6, -9, -6, -9], 24, True), (1, 2, [3, 3, 3, 3], 12, True), (1, 2, [3, -1, 2, 0], 5, False),
    (3, 2, [1, 1, 1, 1], 3, True),
])
def test_upfirdn2d_matches_scipy(up: int, down: int, pad: list[int], taps: int, separable: bool) -> None:
    rng = np.random.default_rng(taps + up)
    x = rng.standard_normal((2, 3, 11, 13))
    f = rng.standard_normal(taps) if separable else rng.standard_normal((taps, taps))
    y = upfirdn2d(torch.as_tensor(x), torch.as_tensor(f), up=up, down=down, padding=pad, gain=up * up)
    for b in range(2):
        for c in range(3):
            ref = _scipy_upfirdn2d(x[b, c], f, up, down, pad, gain=up * up)
            assert y.shape[2:] == ref.shape
            assert np.allclose(y[b, c].numpy(), ref, atol=1e-10)


def test_conv2d_resample_up_equals_upsample_then_conv() -> None:
    """The transposed-conv path equals zero insertion + FIR + flipped-kernel convolution."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    fast = conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
    slow = upfirdn2d(x, f, up=2, padding=[3, 2, 3, 2], gain=4)  # padding incl. the kernel's (1) share
    slow = torch.nn.functional.conv2d(slow, w.flip([2, 3]))
    assert fast.shape == (2, 4, 12, 10) and torch.allclose(fast, slow, atol=1e-10)
    assert upsample2d(x, f).shape == (2, 3, 12, 10)


def test_official_names_and_num_ws_256() -> None:
    G = build_generator("stylegan2", dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3))
    assert G.num_ws == 14 and (G.img_height, G.img_width) == (256, 256)
    sd = G.state_dict()
    shapes = {
        "synthesis.b4.const": (512, 4, 4),
        "synthesis.b4.resample_filter": (4, 4),
        "synthesis.b4.conv1.noise_const": (4, 4),
        "synthesis.b4.conv1.noise_strength": (),
        "synthesis.b4.torgb.weight": (3, 512, 1, 1),
        "synthesis.b8.conv0.weight": (512, 512, 3, 3),
        "synthesis.b8.conv0.affine.weight": (512, 512),
        "synthesis.b256.conv1.noise_const": (256, 256),
        "synthesis.b256.torgb.affine.bias": (128,),
        "mapping.fc7.weight": (512, 512),
        "mapping.w_avg": (512,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "synthesis.b4.conv0.weight" not in sd and "mapping.embed.weight" not in sd


@pytest.mark.parametrize("kind,shape", [("sg2", (32, 32)), ("sg2-human", (32, 16))])
def test_noise_modes_shapes_and_truncation(kind: str, shape: tuple[int, int]) -> None:
    G = make_small_generator(kind)
    assert G.num_ws == 8 and (G.img_height, G.img_width) == shape
    assert tuple(G.synthesis.b4.const.shape) == (64, 4, 4 if shape[0] == shape[1] else 2)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), None, truncation_psi=0.6)
    with torch.no_grad():
        const1 = G.synthesis(ws, noise_mode="const")
        const2 = G.synthesis(ws, noise_mode="const")
        none = G.synthesis(ws, noise_mode="none")
        rand1 = G.synthesis(ws, noise_mode="random")
        rand2 = G.synthesis(ws, noise_mode="random")
    assert const1.shape == (2, 3, *shape) and torch.isfinite(const1).all()
    assert torch.equal(const1, const2)
    assert not torch.allclose(const1, none) and not torch.allclose(rand1, rand2)
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="bogus")


def test_gradients_flow_to_every_w_and_unfused_path_agrees() -> None:
    G = make_small_generator("sg2").requires_grad_(False)
    ws = G.mapping(torch.randn(1, G.z_dim), None).detach().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and bool((ws.grad.abs().sum(dim=2) > 0).all())
    with torch.no_grad():
        fused = G.synthesis(ws, fused_modconv=True)
        unfused = G.synthesis(ws, fused_modconv=False)
    assert torch.allclose(fused, unfused, atol=1e-4)


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
def test_other_architectures_and_labels(architecture: str) -> None:
    torch.manual_seed(0)
    G = build_generator("stylegan2", dict(z_dim=16, c_dim=3, w_dim=16, img_resolution=16, img_channels=3,
                                          channel_base=256, channel_max=32, architecture=architecture,
                                          mapping_kwargs={"num_layers": 2})).eval()
    c = torch.eye(3)[:2]
    img = G(torch.randn(2, 16), c)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert ("synthesis.b8.skip.weight" in G.state_dict()) == (architecture == "resnet")
    assert "mapping.embed.weight" in G.state_dict()
    with pytest.raises(ValueError):
        G(torch.randn(2, 16))  # conditional network needs labels


def test_ada_layout_kwargs_are_normalised() -> None:
    kwargs = normalize_init_kwargs("stylegan2", {
        "class_name": "training.networks.Generator", "z_dim": 8, "w_dim": 8, "c_dim": 0, "img_resolution": 16,
        "img_channels": 3, "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 128, "channel_max": 16, "num_fp16_res": 4, "conv_clamp": 256}})
    assert "class_name" not in kwargs and "synthesis_kwargs" not in kwargs
    assert kwargs["channel_base"] == 128 and kwargs["conv_clamp"] == 256
    assert kwargs["mapping_kwargs"] == {"num_layers": 2, "w_avg_beta": 0.995}
    G = build_generator("stylegan2", kwargs)
    assert G.num_ws == 6
    human = normalize_init_kwargs("stylegan2", {"channel_base": 128}, (8, 0, 8, 16, False, 3), square_positional=True)
    assert human["square"] is False and human["img_channels"] == 3 and human["img_resolution"] == 16
    assert build_generator("stylegan2", human).img_width == 8
