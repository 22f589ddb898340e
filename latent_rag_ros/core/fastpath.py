"""The protector's fast path: the update rules of ``core.generation``, with less work per step.

What it changes (measured on CPU in docs/perf.md), and what it keeps:
- One generator forward per step feeds both losses (as the eager path), and the graph is cut at the
  image: dL_div/dI is taken from the cheap pixel loss and dL_id/dI from one backward through the
  re-ID encoder, then both go back through G from the same saved graph. The gradients are the eager
  ones (same operations, same order). A single backward of the *summed* objective is NOT used:
  every W+ row influences the one image both losses read, so dL_id/dw is not zero on the coarse rows
  (test_fastpath.py measures it) and summing would mix the two gradients.
- Steps that do not update the fine rows (alternating schedule) evaluate E without a graph.
- The final image and its embedding come from the loop's last evaluation instead of a second render.
- Per-step losses stay on the device until the end (no host synchronisation per step).
- ``loss_encoder(reid, "folded")`` (opt-in, ``protector.fast_reid``): E for L_id with BatchNorm folded
  into the convolutions and channels_last. Faster, but the forward's rounding differs, ReLU6 decisions
  near their kinks flip, and the T-step sign iteration amplifies that: at the demo settings the result
  differs from eager about as much as eager at 1 vs 2 CPU threads does (docs/perf.md). Not the default.
  (A hand-written one-pass Conv-BN-ReLU6 backward with a bit-identical forward was tried: exact, but
  slower than autograd's on this CPU, so it was dropped.)
- ``loss_encoder(reid, "channels_last")`` (opt-in): E in channels_last only. Not bit-exact either, but its
  gradients differ by ~1e-6 relative and on the demo bench no sign step flipped; 6% faster E, a gain
  inside the loop benchmark's noise (docs/perf.md).
- ``batched_backward``: both VJPs through G in one vmapped backward (``is_grads_batched``). Exact; on
  CPU it measured no gain, so ``auto`` enables it on CUDA only (unmeasured there: no GPU was lent).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latent_rag_ros.core.generation import (
    GenerationTrace,
    StepOptions,
    layer_masks,
    render,
    sign_step,
    start_loop,
)

LOG = logging.getLogger(__name__)


@dataclass
class FastResult:
    """w*_adv, the per-step trace, and the protected images G(w*_adv) [B,3,H,W] with their embeddings."""

    w_adv: torch.Tensor
    trace: GenerationTrace
    images: torch.Tensor
    embeddings: torch.Tensor


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """An eval copy of ``module`` with Conv2d+BatchNorm2d pairs folded (torch.fx); unchanged copy if untraceable."""
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(module).eval()
    try:
        return fuse(net)
    except Exception as exc:  # noqa: BLE001 - fx cannot trace every architecture; folding is optional
        LOG.info("BatchNorm folding skipped for %s: %s", type(module).__name__, exc)
        return net


REID_MODES = ("off", "folded", "channels_last")


def loss_encoder(reid: torch.nn.Module, mode: str = "off") -> torch.nn.Module:
    """E as used inside L_id: ``off`` (E itself), ``folded`` (a copy, BatchNorm folded, channels_last) or
    ``channels_last`` (a copy in channels_last memory format, nothing folded).

    ``reid`` follows the ReIDEncoder contract (resize + normalise in forward); its ``net`` is rewritten
    when it exists, the whole module otherwise. The original module is never modified. ``channels_last``
    runs E's convolutions through oneDNN: same function, gradients equal to ~1e-6 relative, not bit-exact
    (docs/perf.md: E 6% faster; no sign step flipped on the demo bench).
    """
    if mode not in REID_MODES:
        raise ValueError(f"fast_reid must be one of {', '.join(REID_MODES)}, got {mode!r}")
    if mode == "off":
        return reid
    fast = copy.deepcopy(reid).eval().requires_grad_(False)
    if mode == "folded":
        if isinstance(getattr(fast, "net", None), torch.nn.Module):
            fast.net = fold_batchnorm(fast.net).requires_grad_(False)
        else:
            fast = fold_batchnorm(fast).requires_grad_(False)
    return fast.to(memory_format=torch.channels_last)


def step_deviation(w_a: torch.Tensor, w_b: torch.Tensor, opts: StepOptions) -> dict[str, float]:
    """How far two runs of T sign steps from the same w* ended apart, in units of their sign steps.

    ``entries_differing``: share of W+ entries that differ by more than half a step;
    ``flipped_steps``: net flipped sign steps (|dw| / 2 steps, rounded) over all sign steps taken (T per
    entry; T/2 when alternating). Flips that cancel out are not seen, so it is a lower bound.
    """
    coarse_mask, fine_mask = layer_masks(w_a, opts.coarse_layers)
    step = (coarse_mask * opts.coarse_step + fine_mask * opts.fine_step).clamp_min(1e-12)
    dw = (w_a - w_b).abs()
    flips = torch.round(dw / (2 * step))
    per_entry = opts.steps / 2 if opts.schedule == "alternating" else opts.steps
    total = max(per_entry * dw.numel(), 1)
    return {"max_abs_dw": float(dw.max()) if dw.numel() else 0.0,
            "entries_differing": float((dw > step / 2).float().mean()) if dw.numel() else 0.0,
            "flipped_steps": float(flips.sum()) / total}


def use_batched_backward(setting: str, device: torch.device) -> bool:
    """``on``/``off``, or ``auto``: on for CUDA only (no gain measured on CPU)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"batched_backward must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def _id_loss(emb: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Per-sample L_id = 1 - cos(E(G(w)), f) (eq. 7)."""
    return 1.0 - F.cosine_similarity(emb, identity, dim=1)


def _vjps(
    raw: torch.Tensor, w: torch.Tensor, grads: list[torch.Tensor], batched: bool
) -> list[torch.Tensor]:
    """dL/dw for each upstream image gradient in ``grads``, through the one saved graph of G."""
    if not grads:
        return []
    if batched and len(grads) > 1:
        return list(torch.autograd.grad(raw, w, torch.stack(grads), is_grads_batched=True)[0].unbind(0))
    return [torch.autograd.grad(raw, w, g, retain_graph=i < len(grads) - 1)[0] for i, g in enumerate(grads)]


class _Trace:
    """Per-step losses kept on the device; turned into a GenerationTrace once at the end."""

    def __init__(self) -> None:
        self.distance: list[torch.Tensor] = []
        self.id_loss: list[torch.Tensor] = []

    def add(self, distance: torch.Tensor, id_loss: torch.Tensor) -> None:
        self.distance.append(distance.detach())
        self.id_loss.append(id_loss.detach())

    def done(self) -> GenerationTrace:
        if not self.distance:
            return GenerationTrace()
        return GenerationTrace(torch.stack(self.distance).cpu().tolist(), torch.stack(self.id_loss).cpu().tolist())


def step_gradients(
    w: torch.Tensor,
    images: torch.Tensor,
    identity: torch.Tensor,
    generator: torch.nn.Module,
    reid: Callable[[torch.Tensor], torch.Tensor],
    do_div: bool,
    do_id: bool,
    batched_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward of G: per-sample distance and L_id, and d(-distance)/dw and dL_id/dw where asked (else None).

    ``identity`` must be L2-normalised. The graph is cut at the image, so E runs once and G's graph is
    walked once per wanted gradient (or once, vmapped, with ``batched_backward``).
    """
    w = w.detach().requires_grad_(do_div or do_id)
    with torch.set_grad_enabled(do_div or do_id):
        raw = render(generator, w, tuple(images.shape[-2:]))
    img = raw.detach().requires_grad_(do_div or do_id)
    with torch.set_grad_enabled(do_div):
        distance = (img - images).flatten(1).norm(dim=1)
    with torch.set_grad_enabled(do_id):
        id_loss = _id_loss(reid(img), identity)
    upstream = []
    if do_div:
        upstream.append(torch.autograd.grad(-distance.sum(), img)[0])
    if do_id:
        upstream.append(torch.autograd.grad(id_loss.sum(), img)[0])
    grads = _vjps(raw, w, upstream, batched_backward)
    g_div = grads.pop(0) if do_div else None
    g_id = grads.pop(0) if do_id else None
    return distance.detach(), id_loss.detach(), g_div, g_id


def fast_generation(
    w_star: torch.Tensor,
    images: torch.Tensor,
    identity: torch.Tensor,
    generator: torch.nn.Module,
    reid: Callable[[torch.Tensor], torch.Tensor],
    opts: StepOptions | None = None,
    batched_backward: bool = False,
    timings: dict[str, float] | None = None,
) -> FastResult:
    """Same contract and update rule as ``identity_aligned_generation``, plus the final images and embeddings.

    ``timings`` (optional) receives ``render``: the milliseconds of the final no-grad evaluation.
    """
    s = start_loop(w_star, images, identity, opts)
    opts, momentum, coarse_mask, fine_mask = s.opts, s.momentum, s.coarse_mask, s.fine_mask
    size, identity, w, mom_div, mom_id = s.size, s.identity, s.w, s.mom_div, s.mom_id
    trace = _Trace()
    authors = opts.schedule == "authors"
    for t in range(opts.steps):
        if authors:
            do_div, do_id = opts.use_div_loss, opts.use_id_loss
            if do_div:  # the authors' coarse update: its own forward, L_div only, no encoder
                w.requires_grad_(True)
                raw = render(generator, w, size)
                distance = (raw - images).flatten(1).norm(dim=1)
                g = torch.autograd.grad(-distance.sum(), w)[0]
                w, mom_div = sign_step(w.detach(), g, coarse_mask, opts.coarse_step, mom_div, momentum)
            do_div = False   # the fine half below is a separate forward
        else:
            do_div = opts.use_div_loss and (opts.schedule == "simultaneous" or t % 2 == 0)
            do_id = opts.use_id_loss and (opts.schedule == "simultaneous" or t % 2 == 1)
        distance, id_loss, g_div, g_id = step_gradients(w, images, identity, generator, reid, do_div, do_id,
                                                        batched_backward)
        trace.add(distance, id_loss)
        w = w.detach()
        if do_div:
            w, mom_div = sign_step(w, g_div, coarse_mask, opts.coarse_step, mom_div, momentum)
        if do_id:
            w, mom_id = sign_step(w, g_id, fine_mask, opts.fine_step, mom_id, momentum)
    t0 = time.perf_counter()
    with torch.no_grad():
        img = render(generator, w, size)
        emb = reid(img)
        trace.add((img - images).flatten(1).norm(dim=1), _id_loss(emb, identity))
    if timings is not None:
        if img.device.type == "cuda":
            torch.cuda.synchronize(img.device)
        timings["render"] = timings.get("render", 0.0) + (time.perf_counter() - t0) * 1e3
    return FastResult(w.detach(), trace.done(), img, emb)
