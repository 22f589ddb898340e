"""Identity-aligned visual-divergence generation (eq. 6-9) with small random-weight networks.

The generator is the project's real StyleGAN3 implementation at a tiny size (random weights:
no pretrained StyleGAN exists offline); the re-ID encoder is test/nets.py's TinyReID.
"""

from __future__ import annotations

import pytest
import torch

from latent_rag_ros.core.generation import StepOptions, identity_aligned_generation, render

from nets import TinyReID, tiny_stylegan3

COARSE = 3


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    g = tiny_stylegan3()
    return g, TinyReID(dim=16).eval().requires_grad_(False)


def _inputs(g: torch.nn.Module, reid: torch.nn.Module, b: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    w = g.mapping(torch.randn(b, g.z_dim, generator=gen)).detach()
    images = torch.rand(b, 3, g.img_height, g.img_width, generator=gen)
    with torch.no_grad():
        f = reid(images)
    return w, images, f


def test_gradients_are_confined_to_their_layers(nets) -> None:
    g, reid = nets
    w, images, f = _inputs(g, reid)
    no_id, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=3, use_id_loss=False))
    assert torch.equal(no_id[:, COARSE:], w[:, COARSE:]), "fine layers moved without the identity loss"
    assert not torch.equal(no_id[:, :COARSE], w[:, :COARSE])
    no_div, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=3, use_div_loss=False))
    assert torch.equal(no_div[:, :COARSE], w[:, :COARSE]), "coarse layers moved without the divergence loss"
    assert not torch.equal(no_div[:, COARSE:], w[:, COARSE:])
    # With both losses on, one step moves each group exactly as its own loss alone would.
    both, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1))
    one_div, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1, use_id_loss=False))
    one_id, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1, use_div_loss=False))
    assert torch.equal(both[:, :COARSE], one_div[:, :COARSE])
    assert torch.equal(both[:, COARSE:], one_id[:, COARSE:])


def test_steps_are_signed_with_the_papers_sizes(nets) -> None:
    g, reid = nets
    w, images, f = _inputs(g, reid)
    out, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1))
    delta = (out - w).abs()
    coarse, fine = delta[:, :COARSE], delta[:, COARSE:]
    assert torch.all((coarse < 1e-7) | ((coarse - 0.001).abs() < 1e-6))
    assert torch.all((fine < 1e-7) | ((fine - 0.01).abs() < 1e-6))


def test_identity_loss_falls_and_distance_rises(nets) -> None:
    g, reid = nets
    w, images, f_other = _inputs(g, reid, seed=2)
    # Target identity: the embedding of a different random image, so L_id starts well above 0.
    opts = StepOptions(steps=8, coarse_step=0.02, fine_step=0.02)
    _, trace = identity_aligned_generation(w, images, f_other, g, reid, opts)
    d0, dT = trace.distance[0], trace.distance[-1]
    i0, iT = trace.id_loss[0], trace.id_loss[-1]
    assert len(trace.distance) == opts.steps + 1
    for b in range(len(d0)):
        assert dT[b] > d0[b], f"pixel distance did not rise for sample {b}: {d0[b]} -> {dT[b]}"
        assert iT[b] < i0[b], f"identity loss did not fall for sample {b}: {i0[b]} -> {iT[b]}"


def test_batch_equals_one_by_one_and_is_deterministic(nets) -> None:
    g, reid = nets
    w, images, f = _inputs(g, reid, b=3)
    opts = StepOptions(steps=3, momentum=0.9)
    batch, _ = identity_aligned_generation(w, images, f, g, reid, opts)
    again, _ = identity_aligned_generation(w, images, f, g, reid, opts)
    assert torch.equal(batch, again)
    for i in range(3):
        single, _ = identity_aligned_generation(w[i:i + 1], images[i:i + 1], f[i:i + 1], g, reid, opts)
        assert torch.allclose(single, batch[i:i + 1], atol=1e-5)
    img_b = render(g, batch)
    img_s = torch.cat([render(g, batch[i:i + 1]) for i in range(3)])
    assert torch.allclose(img_b, img_s, atol=1e-5)


def test_alternating_schedule_updates_one_group_per_step(nets) -> None:
    g, reid = nets
    w, images, f = _inputs(g, reid)
    out, _ = identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1, schedule="alternating"))
    assert torch.equal(out[:, COARSE:], w[:, COARSE:]) and not torch.equal(out[:, :COARSE], w[:, :COARSE])
    with pytest.raises(ValueError):
        identity_aligned_generation(w, images, f, g, reid, StepOptions(steps=1, schedule="random"))


def test_losses_match_eq_6_and_7_by_hand() -> None:
    from latent_rag_ros.core.generation import losses

    img = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]]])       # [1,3,1,2]
    target = torch.zeros_like(img)
    # ||G(w) - I|| = sqrt(0 + 1 + .25 + .25 + 1 + 0) = sqrt(2.5); L_div is its negative (eq. 6)
    identity = torch.tensor([[1.0, 0.0]])

    def reid(x: torch.Tensor) -> torch.Tensor:   # a fixed linear "encoder": E(x) = (x00, x01) of channel 0
        return x[:, 0, 0, :]

    distance, id_loss = losses(img, target, identity, reid)
    assert torch.allclose(distance, torch.tensor([2.5 ** 0.5]))
    # E(G(w)) = (0, 1): cos with f = (1, 0) is 0, so L_id = 1 (eq. 7)
    assert torch.allclose(id_loss, torch.tensor([1.0]))
