"""Identity-aligned visual-divergence generation (paper section III-D, eq. 6-9).

T iterative sign-gradient (I-FGSM) steps on the augmented code w*: the divergence loss
``L_div = -||G(w) - I||`` moves only the coarse W+ layers (structure: pose, layout) and the identity
loss ``L_id = 1 - cos(E(G(w)), f)`` moves only the fine layers (appearance that carries identity).

Sizes: the crop I is prepared at the generator's output size (``Protector`` resizes every crop to
``(G.img_height, G.img_width)``), so ``L_div`` compares G(w) and I pixel for pixel at that size (if a
caller passes another size, G(w) is resized bilinearly to I's size). For ``L_id`` the re-ID encoder
resizes G(w) itself to its own input size (256x128 by default) inside its differentiable forward.
Losses are summed over the batch, so each sample's gradient depends only on that sample and a batch
gives the same result as its items one by one.

Schedules: ``simultaneous`` (the paper's I-FGSM: one forward, both losses, both groups move every
step), ``alternating`` (even steps coarse, odd steps fine) and ``authors`` (the authors' released
update rule: MI-FGSM with momentum 0.9, each step a coarse update then a fine update, each with its
own forward pass). This module is the eager reference; ``core.fastpath`` runs the same rules faster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from latent_rag_ros.config import ProtectorConfig
from latent_rag_ros.core.imaging import from_generator

# Options of eq. 8 are the protector section of the config (its defaults are the paper's: T=10,
# coarse 0..2 at 0.001, fine at 0.01); the loops read steps, coarse_layers, coarse_step, fine_step,
# momentum, schedule, use_div_loss and use_id_loss from it.
StepOptions = ProtectorConfig


SCHEDULES = ("simultaneous", "alternating", "authors")
AUTHORS_MOMENTUM = 0.9   # the authors' released code: MI-FGSM decay of both momentum buffers


def effective_momentum(opts: StepOptions) -> float:
    """MI-FGSM decay actually used: the authors' 0.9 for their schedule unless one is set explicitly."""
    if opts.schedule == "authors" and opts.momentum == 0:
        return AUTHORS_MOMENTUM
    return opts.momentum


@dataclass
class GenerationTrace:
    """Per-step losses: distance ||G(w)-I|| (so L_div = -distance) and L_id, each per sample."""

    distance: list[list[float]] = field(default_factory=list)
    id_loss: list[list[float]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, float]]:
        """One dict per step with the batch means (for logs and reports)."""
        return [
            {"step": t, "distance": sum(d) / len(d), "id_loss": sum(i) / len(i)}
            for t, (d, i) in enumerate(zip(self.distance, self.id_loss))
        ]


def render(generator: torch.nn.Module, w: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """G(w) mapped to [0, 1] RGB, resized bilinearly to ``size`` = (H, W) when it differs."""
    dtype = next(generator.parameters()).dtype
    img = from_generator(generator.synthesis(w.to(dtype), noise_mode="const").float())
    if size is not None and tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
    return img


def losses(
    image: torch.Tensor, target: torch.Tensor, identity: torch.Tensor, reid: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample pixel distance ||G(w) - I||_2 (eq. 6 is its negative) and L_id of eq. 7."""
    distance = (image - target).flatten(1).norm(dim=1)
    emb = reid(image)
    id_loss = 1.0 - F.cosine_similarity(emb, identity, dim=1)
    return distance, id_loss


def _normalised(grad: torch.Tensor) -> torch.Tensor:
    """Gradient divided by its per-sample mean absolute value (MI-FGSM normalisation)."""
    scale = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
    return grad / scale.view(-1, *([1] * (grad.ndim - 1)))


def layer_masks(w: torch.Tensor, coarse_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[1,L,1] masks of the coarse W+ rows (0..coarse_layers-1, L_div) and of the fine rows (L_id)."""
    num_layers = w.shape[1]
    coarse = torch.zeros(num_layers, dtype=torch.bool, device=w.device)
    coarse[: min(coarse_layers, num_layers)] = True
    coarse_mask = coarse.view(1, -1, 1).to(w.dtype)
    return coarse_mask, 1.0 - coarse_mask


def sign_step(
    w: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, step: float, mom: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One descent step ``w - step * sign(g) * mask`` (g through MI-FGSM momentum when > 0); new (w, momentum)."""
    if momentum > 0:
        mom = momentum * mom + _normalised(grad * mask)
        grad = mom
    return w - step * torch.sign(grad) * mask, mom


def check_schedule(opts: StepOptions) -> None:
    """Refuse an unknown schedule name with the list of known ones."""
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {opts.schedule!r}: use one of {', '.join(SCHEDULES)}")


@dataclass
class LoopStart:
    """What every T-step loop starts from: masks, w, zero momenta, normalised f, the target size, the decay."""

    opts: StepOptions
    momentum: float
    coarse_mask: torch.Tensor
    fine_mask: torch.Tensor
    size: tuple[int, int]
    identity: torch.Tensor
    w: torch.Tensor
    mom_div: torch.Tensor
    mom_id: torch.Tensor


def start_loop(
    w_star: torch.Tensor, images: torch.Tensor, identity: torch.Tensor, opts: StepOptions | None
) -> LoopStart:
    """The prologue shared by the eager loops and ``core.fastpath``: checks ``opts``, builds the loop state."""
    opts = opts or StepOptions()
    check_schedule(opts)
    coarse_mask, fine_mask = layer_masks(w_star, opts.coarse_layers)
    w = w_star.detach().float().clone()
    return LoopStart(opts=opts, momentum=effective_momentum(opts), coarse_mask=coarse_mask, fine_mask=fine_mask,
                     size=tuple(images.shape[-2:]), identity=F.normalize(identity.float(), dim=1), w=w,
                     mom_div=torch.zeros_like(w), mom_id=torch.zeros_like(w))


def identity_aligned_generation(
    w_star: torch.Tensor,
    images: torch.Tensor,
    identity: torch.Tensor,
    generator: torch.nn.Module,
    reid: Callable[[torch.Tensor], torch.Tensor],
    opts: StepOptions | None = None,
) -> tuple[torch.Tensor, GenerationTrace]:
    """Run T steps of eq. 8 from ``w_star`` [B,L,C]; return w*_adv (eq. 9) and the per-step trace.

    ``images``: the crops I as [B,3,H,W] in [0,1]; ``identity``: f, [B,D] (the crop's re-ID vector).
    Gradients are confined: the coarse rows only ever see dL_div/dw, the fine rows only dL_id/dw.
    """
    s = start_loop(w_star, images, identity, opts)
    if s.opts.schedule == "authors":
        return _authors_loop(s, images, generator, reid)
    opts, coarse_mask, fine_mask, size, identity = s.opts, s.coarse_mask, s.fine_mask, s.size, s.identity
    w, mom_div, mom_id = s.w, s.mom_div, s.mom_id
    trace = GenerationTrace()
    for t in range(opts.steps):
        do_div = opts.use_div_loss and (opts.schedule == "simultaneous" or t % 2 == 0)
        do_id = opts.use_id_loss and (opts.schedule == "simultaneous" or t % 2 == 1)
        w.requires_grad_(True)
        img = render(generator, w, size)
        distance, id_loss = losses(img, images, identity, reid)
        trace.distance.append(distance.detach().cpu().tolist())
        trace.id_loss.append(id_loss.detach().cpu().tolist())
        wanted = [(-distance.sum(), "div")] if do_div else []
        if do_id:
            wanted.append((id_loss.sum(), "id"))
        grads = [
            (kind, torch.autograd.grad(loss, w, retain_graph=i < len(wanted) - 1)[0].detach())
            for i, (loss, kind) in enumerate(wanted)
        ]
        w = w.detach()
        for kind, g in grads:
            if kind == "div":
                w, mom_div = sign_step(w, g, coarse_mask, opts.coarse_step, mom_div, s.momentum)
            else:
                w, mom_id = sign_step(w, g, fine_mask, opts.fine_step, mom_id, s.momentum)
    with torch.no_grad():
        img = render(generator, w, size)
        distance, id_loss = losses(img, images, identity, reid)
    trace.distance.append(distance.cpu().tolist())
    trace.id_loss.append(id_loss.cpu().tolist())
    return w.detach(), trace


def _authors_loop(
    s: LoopStart,
    images: torch.Tensor,
    generator: torch.nn.Module,
    reid: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, GenerationTrace]:
    """The authors' rule: per step a coarse MI-FGSM update from its own forward, then a fine one from another.

    The trace's step t holds the losses of step t's fine-update forward (after its coarse update), so
    no forward pass is added for logging; the last entry is at w*_adv.
    """
    opts, momentum, coarse_mask, fine_mask = s.opts, s.momentum, s.coarse_mask, s.fine_mask
    size, identity, w, mom_div, mom_id = s.size, s.identity, s.w, s.mom_div, s.mom_id
    trace = GenerationTrace()
    for _ in range(opts.steps):
        if opts.use_div_loss:
            w.requires_grad_(True)
            distance = (render(generator, w, size) - images).flatten(1).norm(dim=1)
            g = torch.autograd.grad(-distance.sum(), w)[0]
            w, mom_div = sign_step(w.detach(), g, coarse_mask, opts.coarse_step, mom_div, momentum)
        w.requires_grad_(opts.use_id_loss)
        with torch.set_grad_enabled(opts.use_id_loss):
            distance, id_loss = losses(render(generator, w, size), images, identity, reid)
        trace.distance.append(distance.detach().cpu().tolist())
        trace.id_loss.append(id_loss.detach().cpu().tolist())
        if opts.use_id_loss:
            g = torch.autograd.grad(id_loss.sum(), w)[0]
            w, mom_id = sign_step(w.detach(), g, fine_mask, opts.fine_step, mom_id, momentum)
        w = w.detach()
    with torch.no_grad():
        distance, id_loss = losses(render(generator, w, size), images, identity, reid)
    trace.distance.append(distance.cpu().tolist())
    trace.id_loss.append(id_loss.cpu().tolist())
    return w, trace
