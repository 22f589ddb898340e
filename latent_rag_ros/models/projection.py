"""Optimisation-based image -> W+ projection through a generator (slower alternative to E4E).

Starts every W+ layer at the generator's ``w_avg`` and runs Adam on the code so that
``synthesis(ws)`` matches the image (pixel L2, optional SSIM via pytorch-msssim and an optional
re-ID identity term). The generator itself is never modified (gradients are taken w.r.t. ``ws`` only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

GENERATOR_API = "num_ws, w_dim, w_avg [w_dim], img_height, img_width, synthesis(ws, noise_mode=...)"


def _ssim_window(h: int, w: int) -> int:
    """Largest odd Gaussian window <= 11 that fits the image (pytorch-msssim needs win <= side)."""
    win = min(11, h, w)
    return win if win % 2 == 1 else win - 1


class ProjectionEncoder(nn.Module):
    """``forward(images [B,3,H,W] in [0,1]) -> W+ [B, num_ws, w_dim]`` by per-image optimisation.

    Loss = ``l2_weight * MSE`` + ``ssim_weight * (1 - SSIM)`` + ``id_weight * (1 - cos(reid(G(w)),
    reid(x)))`` (the last only when ``reid`` is given), all on images in [0,1] at the input's size.
    ``lr`` decays with a cosine schedule to ``lr * final_lr_frac``. ``last_losses`` keeps the mean loss
    per step of the latest call so callers can check convergence.
    """

    def __init__(
        self,
        generator: nn.Module,
        steps: int = 200,
        lr: float = 0.05,
        reid: nn.Module | None = None,
        l2_weight: float = 1.0,
        ssim_weight: float = 0.0,
        id_weight: float = 0.1,
        final_lr_frac: float = 0.1,
        noise_mode: str = "const",
    ) -> None:
        super().__init__()
        for attr in ("num_ws", "w_dim", "w_avg", "img_height", "img_width", "synthesis"):
            if not hasattr(generator, attr):
                raise TypeError(f"generator lacks '{attr}' (needs {GENERATOR_API})")
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.generator = generator
        self.reid = reid
        self.num_ws, self.w_dim = int(generator.num_ws), int(generator.w_dim)
        self.steps, self.lr = int(steps), float(lr)
        self.l2_weight, self.ssim_weight = float(l2_weight), float(ssim_weight)
        self.id_weight = float(id_weight)
        self.final_lr_frac = float(final_lr_frac)
        self.noise_mode = noise_mode
        self.last_losses: list[float] = []

    def render(self, ws: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Synthesise ``ws`` and return RGB in [0,1] resized (bilinear) to ``size`` = (H, W)."""
        img = self.generator.synthesis(ws, noise_mode=self.noise_mode)
        img = (img.float() + 1.0) / 2.0
        if tuple(img.shape[-2:]) != tuple(size):
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=False)
        return img

    def loss(self, rendered: torch.Tensor, target: torch.Tensor,
             target_id: torch.Tensor | None) -> torch.Tensor:
        """Per-image loss [B] between rendered and target images (both [0,1])."""
        total = self.l2_weight * (rendered - target).square().flatten(1).mean(1)
        if self.ssim_weight > 0:
            win = _ssim_window(*target.shape[-2:])
            s = ssim(rendered.clamp(0, 1), target, data_range=1.0, size_average=False, win_size=win)
            total = total + self.ssim_weight * (1.0 - s)
        if target_id is not None and self.reid is not None and self.id_weight > 0:
            total = total + self.id_weight * (1.0 - (self.reid(rendered.clamp(0, 1)) * target_id).sum(1))
        return total

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Project images (RGB, [0,1]) to W+ codes; returns detached ``[B, num_ws, w_dim]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        w_avg = self.generator.w_avg.detach().float().reshape(1, 1, -1)
        target = images.detach().float().to(w_avg.device)
        size = (int(target.shape[-2]), int(target.shape[-1]))
        ws = w_avg.expand(target.shape[0], self.num_ws, self.w_dim).clone().requires_grad_(True)
        opt = torch.optim.Adam([ws], lr=self.lr, betas=(0.9, 0.999))
        self.last_losses = []
        with torch.enable_grad():
            target_id = None
            if self.reid is not None and self.id_weight > 0:
                with torch.no_grad():
                    target_id = self.reid(target)
            for step in range(self.steps):
                t = step / max(self.steps - 1, 1)
                for group in opt.param_groups:
                    group["lr"] = self.lr * (self.final_lr_frac + (1 - self.final_lr_frac)
                                             * 0.5 * (1 + math.cos(math.pi * t)))
                per_image = self.loss(self.render(ws, size), target, target_id)
                loss = per_image.sum()
                (grad,) = torch.autograd.grad(loss, ws)
                ws.grad = grad
                opt.step()
                self.last_losses.append(float(per_image.mean().detach()))
        return ws.detach()
