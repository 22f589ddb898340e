"""The protector's fast path (core/fastpath.py) against the eager reference loop (core/generation.py).

Real parts: the project's StyleGAN3 at a tiny size with random weights (no pretrained StyleGAN exists
offline), test/nets.py's TinyReID, and the real DeepSORT MobileNetV2 re-ID network with its shipped
weights for the BatchNorm-folding checks (at a small input size to keep the test short).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latent_rag_ros.core.fastpath import (
    fast_generation,
    loss_encoder,
    step_deviation,
    step_gradients,
    use_batched_backward,
)
from latent_rag_ros.core.generation import StepOptions, identity_aligned_generation, losses, render
from latent_rag_ros.core.imaging import tensor_to_bgr
from latent_rag_ros.eval.metrics import ssim
from latent_rag_ros.models.reid import load_reid

from nets import TinyReID, loop_inputs, tiny_stylegan3

COARSE = 3
SCHEDULES = [
    StepOptions(steps=4, coarse_step=0.02, fine_step=0.02),
    StepOptions(steps=4, coarse_step=0.02, fine_step=0.02, schedule="alternating"),
    StepOptions(steps=4, coarse_step=0.02, fine_step=0.02, momentum=1.0),
    StepOptions(steps=3, coarse_step=0.02, fine_step=0.02, schedule="authors"),
]


@pytest.fixture(scope="module")
def gen() -> torch.nn.Module:
    return tiny_stylegan3()


@pytest.fixture(scope="module")
def mobilenet() -> torch.nn.Module:
    return load_reid("deepsort_mobilenetv2", input_size=(64, 32))


def _eager_gradients(w, images, f, g, reid):
    """What the eager loop back-propagates: two gradients of the one forward, each from w."""
    w = w.clone().requires_grad_(True)
    distance, id_loss = losses(render(g, w, tuple(images.shape[-2:])), images, f, reid)
    g_div = torch.autograd.grad(-distance.sum(), w, retain_graph=True)[0]
    g_id = torch.autograd.grad(id_loss.sum(), w)[0]
    return g_div, g_id


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _image_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return min(ssim(x, y) for x, y in zip(tensor_to_bgr(a), tensor_to_bgr(b)))


@pytest.mark.parametrize("batched", [False, True])
def test_step_gradients_equal_the_eager_ones(gen, batched: bool) -> None:
    reid = TinyReID(dim=16).eval().requires_grad_(False)
    w, images, f = loop_inputs(gen, reid)
    ref_div, ref_id = _eager_gradients(w, images, f, gen, reid)
    _, _, g_div, g_id = step_gradients(w, images, f, gen, reid, True, True, batched)
    assert _rel(g_div, ref_div) < 1e-4
    assert _rel(g_id, ref_id) < 1e-4


def test_one_backward_of_the_summed_objective_would_mix_the_gradients(gen) -> None:
    """Why the fast path walks G's graph once per loss: L_id also moves the coarse rows' gradient.

    Every W+ row shapes the single image both losses read, so d(L_id)/dw is not zero on the coarse rows
    (nor d(L_div)/dw on the fine rows); a summed objective with per-row masks would not be the eager rule.
    """
    reid = TinyReID(dim=16).eval().requires_grad_(False)
    w, images, f = loop_inputs(gen, reid)
    g_div, g_id = _eager_gradients(w, images, f, gen, reid)
    mixed = g_div + g_id
    assert _rel(mixed[:, :COARSE], g_div[:, :COARSE]) > 1e-3
    assert _rel(mixed[:, COARSE:], g_id[:, COARSE:]) > 1e-3


@pytest.mark.parametrize("opts", SCHEDULES, ids=["simultaneous", "alternating", "momentum", "authors"])
def test_fast_loop_equals_the_eager_loop(gen, opts: StepOptions) -> None:
    reid = TinyReID(dim=16).eval().requires_grad_(False)
    w, images, f = loop_inputs(gen, reid)
    ref_w, ref_trace = identity_aligned_generation(w, images, f, gen, reid, opts)
    res = fast_generation(w, images, f, gen, reid, opts)
    dev = step_deviation(res.w_adv, ref_w, opts)
    assert dev["flipped_steps"] < 0.01 and dev["entries_differing"] < 0.01, dev
    assert np.allclose(res.trace.distance, ref_trace.distance, rtol=1e-4)
    assert np.allclose(res.trace.id_loss, ref_trace.id_loss, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        ref_img = render(gen, ref_w)
        ref_emb = reid(ref_img)
    assert _image_ssim(res.images, ref_img) >= 0.98
    assert torch.allclose(res.embeddings, ref_emb, atol=1e-4)


def test_authors_schedule_takes_two_forwards_per_step(gen) -> None:
    """The authors' rule: coarse update, then a fine update from a new forward, with MI-FGSM momentum 0.9."""
    reid = TinyReID(dim=16).eval().requires_grad_(False)
    w, images, f = loop_inputs(gen, reid)
    calls = []
    handle = gen.synthesis.register_forward_hook(lambda *a: calls.append(1))
    try:
        out, trace = identity_aligned_generation(w, images, f, gen, reid, StepOptions(steps=2, schedule="authors"))
    finally:
        handle.remove()
    assert len(calls) == 2 * 2 + 1                     # two forwards per step, plus the final evaluation
    assert len(trace.distance) == 3
    delta = (out - w).abs()
    assert torch.all(delta[:, :COARSE] <= 2 * 0.001 + 1e-6) and torch.all(delta[:, COARSE:] <= 2 * 0.01 + 1e-6)
    assert not torch.equal(out[:, :COARSE], w[:, :COARSE]) and not torch.equal(out[:, COARSE:], w[:, COARSE:])
    plain, _ = identity_aligned_generation(w, images, f, gen, reid,
                                           StepOptions(steps=2, schedule="authors", momentum=1e-9))
    assert not torch.equal(plain, out), "momentum 0.9 had no effect on the second step"


def _input_grad(enc: torch.nn.Module, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    return torch.autograd.grad((1 - F.cosine_similarity(enc(xi), f)).sum(), xi)[0]


def test_folded_encoder_is_the_same_function_up_to_rounding(mobilenet) -> None:
    """Opt-in folding + channels_last: embeddings equal to fp32 rounding; gradients only to the ReLU6-kink level."""
    folded = loss_encoder(mobilenet, "folded")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in mobilenet.modules()), "the original was modified"
    x = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    f = F.normalize(torch.randn(2, mobilenet.dim, generator=torch.Generator().manual_seed(1)), dim=1)
    with torch.no_grad():
        assert _rel(folded(x), mobilenet(x)) < 1e-4
    assert _rel(_input_grad(folded, x, f), _input_grad(mobilenet, x, f)) < 1e-2
    assert loss_encoder(mobilenet, "off") is mobilenet
    with pytest.raises(ValueError, match="off, folded"):
        loss_encoder(mobilenet, "fast")


def test_fast_loop_with_a_real_encoder_equals_eager(gen, mobilenet) -> None:
    """Fast path (default settings) vs eager with the real MobileNetV2: < 1% flipped steps, image SSIM >= 0.98."""
    w, images, f = loop_inputs(gen, mobilenet)
    opts = StepOptions(steps=6, coarse_step=0.005, fine_step=0.05)
    ref_w, _ = identity_aligned_generation(w, images, f, gen, mobilenet, opts)
    res = fast_generation(w, images, f, gen, loss_encoder(mobilenet), opts)
    dev = step_deviation(res.w_adv, ref_w, opts)
    assert dev["flipped_steps"] < 0.01 and dev["entries_differing"] < 0.01, dev
    with torch.no_grad():
        ref_img = render(gen, ref_w)
    assert _image_ssim(res.images, ref_img) >= 0.98


def test_batched_backward_setting() -> None:
    assert use_batched_backward("auto", torch.device("cpu")) is False
    assert use_batched_backward("auto", torch.device("cuda")) is True
    assert use_batched_backward("on", torch.device("cpu")) is True
    with pytest.raises(ValueError, match="auto, on or off"):
        use_batched_backward("yes", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_fast_loop_on_cuda_equals_eager(gen) -> None:
    """On CUDA (batched backward on): same update as the eager loop on CUDA, SSIM >= 0.98."""
    dev = torch.device("cuda")
    reid = TinyReID(dim=16).eval().requires_grad_(False)
    w, images, f = (t.to(dev) for t in loop_inputs(gen, reid))
    g, reid = copy.deepcopy(gen).to(dev), reid.to(dev)
    opts = StepOptions(steps=4, coarse_step=0.02, fine_step=0.02)
    ref_w, _ = identity_aligned_generation(w, images, f, g, reid, opts)
    res = fast_generation(w, images, f, g, reid, opts, batched_backward=True)
    assert step_deviation(res.w_adv, ref_w, opts)["flipped_steps"] < 0.01
    with torch.no_grad():
        assert _image_ssim(res.images, render(g, ref_w)) >= 0.98


def test_bench_generator_names_map_to_official_configs() -> None:
    from latent_rag_ros.cli.bench import generator_spec

    t = generator_spec("sg3t-256")
    assert (t["img_resolution"], t["square"], t["channel_base"], t["channel_max"]) == (256, True, 16384, 512)
    r = generator_spec("sg3r-human-512x256")
    assert (r["img_resolution"], r["square"], r["conv_kernel"], r["use_radial_filters"]) == (512, False, 1, True)
    assert (r["channel_base"], r["channel_max"]) == (65536, 1024)
    assert generator_spec("demo") is None
    for bad in ("sg3t-100", "sg3r-human-512x512", "stylegan"):
        with pytest.raises(ValueError):
            generator_spec(bad)


def test_bench_protect_prints_the_side_by_side_table(capsys) -> None:
    """One tiny run of the benchmark: three paths, and the default fast path is bit-identical to eager."""
    import json

    from latent_rag_ros.cli import main

    assert main(["bench", "protect", "--generator", "demo", "--batch-sizes", "1", "--repeats", "1", "--threads", "1",
                 "--set", "protector.steps=2", "--set", "protector.m=2"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["path"] for r in rows if "path" in r} == {"reference", "eager", "fast"}
    dev = next(r["deviation"] for r in rows if "deviation" in r)
    assert dev["max_abs_dw"] == 0.0 and dev["ssim_min"] == 1.0
    assert "| demo | 1 |" in out
