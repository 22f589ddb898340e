"""StyleGAN3 generator: official layout/names, shapes, truncation, gradients, filtered_lrelu."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from latent_rag_ros.models.generator_io import build_generator
from latent_rag_ros.models.stylegan3 import Generator, design_lowpass_filter, filtered_lrelu

from helpers_nvlabs import make_small_generator


def _official_t(res: int, **kw: object) -> Generator:
    return build_generator("stylegan3", dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                                             **kw))


def test_official_layer_names_t1024_and_r256() -> None:
    """Names and sizes match NVlabs' released stylegan3-t-*-1024 / stylegan3-r-*-256 networks."""
    G = _official_t(1024)
    assert G.synthesis.layer_names == [
        "L0_36_512", "L1_36_512", "L2_52_512", "L3_52_512", "L4_84_512", "L5_148_512", "L6_148_512",
        "L7_276_323", "L8_276_203", "L9_532_128", "L10_1044_81", "L11_1044_51", "L12_1044_32",
        "L13_1024_32", "L14_1024_3"]
    assert G.num_ws == 16
    R = _official_t(256, channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True)
    assert R.synthesis.layer_names[0] == "L0_36_1024" and R.synthesis.layer_names[-1] == "L14_256_3"
    assert R.synthesis.input.channels == 1024 and list(R.synthesis.input.size) == [36, 36]
    assert float(R.synthesis.input.sampling_rate) == 16 and float(R.synthesis.input.bandwidth) == 2
    assert R.config_name == "stylegan3-r" and G.config_name == "stylegan3-t"
    sd = R.state_dict()
    for key in ("mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.input.weight",
                "synthesis.input.affine.weight", "synthesis.input.transform", "synthesis.input.freqs",
                "synthesis.input.phases", "synthesis.L0_36_1024.affine.weight", "synthesis.L0_36_1024.weight",
                "synthesis.L0_36_1024.bias", "synthesis.L0_36_1024.magnitude_ema",
                "synthesis.L0_36_1024.up_filter", "synthesis.L0_36_1024.down_filter", "synthesis.L14_256_3.weight"):
        assert key in sd, key
    assert tuple(sd["synthesis.L0_36_1024.weight"].shape) == (1024, 1024, 1, 1)  # R: 1x1 convs
    assert sd["synthesis.L0_36_1024.down_filter"].ndim == 2  # radial (jinc) filter
    assert "synthesis.L14_256_3.up_filter" not in sd  # ToRGB has no filters (None buffers)
    assert tuple(G.state_dict()["synthesis.L0_36_512.weight"].shape) == (512, 512, 3, 3)


def test_lowpass_filter_matches_scipy_and_is_normalised() -> None:
    f = design_lowpass_filter(numtaps=12, cutoff=2.0, width=12.0, fs=32)
    assert torch.allclose(f, torch.as_tensor(scipy.signal.firwin(12, 2.0, width=12.0, fs=32), dtype=torch.float32))
    radial = design_lowpass_filter(numtaps=12, cutoff=2.0, width=12.0, fs=32, radial=True)
    assert radial.shape == (12, 12) and abs(float(radial.sum()) - 1) < 1e-5
    assert torch.allclose(radial, radial.t())
    assert design_lowpass_filter(1, 2.0, 1.0, 16) is None


def test_filtered_lrelu_matches_direct_computation() -> None:
    """Bias + 2x upsample + lrelu + 2x downsample against an independent scipy computation."""
    torch.manual_seed(1)
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    fu = torch.as_tensor(scipy.signal.firwin(8, 0.2, fs=2.0))
    fd = torch.as_tensor(scipy.signal.firwin(8, 0.2, fs=2.0))
    pad = [4, 3, 4, 3]
    y = filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=pad, gain=np.sqrt(2), slope=0.2, clamp=3.0)

    ref = []
    for c in range(2):
        a = (x[0, c] + b[c]).numpy()
        z = np.zeros((20, 20))
        z[::2, ::2] = a
        z = np.pad(z, ((4, 3), (4, 3)))
        k = np.outer(fu.numpy(), fu.numpy()) * 4
        z = scipy.signal.convolve2d(z, k, mode="valid")
        z = np.clip(np.where(z >= 0, z, 0.2 * z) * np.sqrt(2), -3, 3)
        z = scipy.signal.convolve2d(z, np.outer(fd.numpy(), fd.numpy()), mode="valid")[::2, ::2]
        ref.append(z)
    assert np.allclose(y[0].numpy(), np.stack(ref), atol=1e-10)


@pytest.mark.parametrize("kind,shape", [("sg3-t", (64, 64)), ("sg3-r", (64, 64)), ("sg3-human", (64, 32))])
def test_small_generator_shapes_truncation_determinism(kind: str, shape: tuple[int, int]) -> None:
    G = make_small_generator(kind)
    assert (G.img_height, G.img_width) == shape and G.num_ws == 8 and G.w_dim == 32
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=0.7)
        assert ws.shape == (2, G.num_ws, G.w_dim)
        ws0 = G.mapping(z, None, truncation_psi=0.0)
        assert torch.allclose(ws0, G.w_avg.expand_as(ws0))
        half = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
        full = G.mapping(z, None)
        assert torch.allclose(half[:, 3:], full[:, 3:]) and not torch.allclose(half[:, :3], full[:, :3])
        img = G.synthesis(ws, noise_mode="const")
        img2 = G.synthesis(ws, noise_mode="random")  # StyleGAN3 has no noise: identical
        img3 = G(z, truncation_psi=0.7)
    assert img.shape == (2, 3, *shape) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and float(img.std()) > 0
    assert torch.equal(img, img2) and torch.allclose(img, img3)
    assert not torch.allclose(img[0], img[1])


def test_gradients_flow_to_every_w() -> None:
    G = make_small_generator("sg3-t").requires_grad_(False)
    ws = G.mapping(torch.randn(1, G.z_dim), None).detach().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    grad = ws.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert bool((grad.abs().sum(dim=2) > 0).all()), "every W of W+ must receive a gradient"


def test_update_emas_moves_w_avg_and_magnitudes() -> None:
    G = make_small_generator("sg3-t").train()
    before = G.w_avg.clone()
    ema_before = G.synthesis.L0_36_64.magnitude_ema.clone()
    G(torch.randn(4, G.z_dim), update_emas=True)
    assert not torch.equal(before, G.w_avg)
    assert not torch.equal(ema_before, G.synthesis.L0_36_64.magnitude_ema)


def test_bad_inputs_are_rejected() -> None:
    G = make_small_generator("sg3-t")
    with pytest.raises(ValueError):
        G.synthesis(torch.zeros(1, G.num_ws + 1, G.w_dim))
    with pytest.raises(ValueError):
        G.mapping(torch.zeros(1, G.z_dim + 1), None)
    with pytest.raises(TypeError):
        build_generator("stylegan3", dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, bogus=1))
