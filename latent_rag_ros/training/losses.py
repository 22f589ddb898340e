"""Training losses: StyleGAN's non-saturating logistic GAN loss, R1, and image reconstruction losses.

The GAN terms follow Goodfellow et al. / Karras et al. (StyleGAN2/3 ``loss.py``): D minimises
``softplus(D(fake)) + softplus(-D(real))``, G minimises ``softplus(-D(G(z)))``, and the lazy R1 penalty
``gamma/2 * ||grad_x D(x)||^2`` is computed on real images every few steps. SSIM comes from
pytorch-msssim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: push real logits up and fake logits down (mean over the batch)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss ``-log sigmoid(D(G(z)))`` (the non-saturating form)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||d sum(D(x)) / dx||^2`` (``real_images`` must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


def ssim_window(height: int, width: int, preferred: int = 11) -> int:
    """Largest odd Gaussian window <= ``preferred`` that fits the image (pytorch-msssim needs it)."""
    win = min(preferred, height, width)
    return max(win if win % 2 else win - 1, 1)


def ssim_per_image(pred01: torch.Tensor, target01: torch.Tensor, win_size: int | None = None) -> torch.Tensor:
    """SSIM of each pair of RGB images in [0, 1] (Gaussian window 11, sigma 1.5 unless too small): ``[B]``."""
    win = win_size or ssim_window(int(pred01.shape[-2]), int(pred01.shape[-1]))
    return ssim(pred01, target01, data_range=1.0, size_average=False, win_size=win)


def reconstruction_loss(
    pred01: torch.Tensor, target01: torch.Tensor, l2: float = 1.0, l1: float = 1.0, ssim_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``l2 * MSE + l1 * L1 + ssim_weight * (1 - SSIM)`` on images in [0, 1]; returns (loss, parts)."""
    mse = F.mse_loss(pred01, target01)
    mae = F.l1_loss(pred01, target01)
    s = ssim_per_image(pred01, target01).mean() if ssim_weight else torch.zeros((), device=pred01.device)
    loss = l2 * mse + l1 * mae + ssim_weight * (1.0 - s)
    return loss, {"mse": float(mse.detach()), "l1": float(mae.detach()), "ssim": float(s.detach())}


def delta_norm(codes: torch.Tensor) -> torch.Tensor:
    """E4E's delta regulariser: sum over W+ layers of ``||w_i - w_0||_2``, mean over the batch."""
    return (codes[:, 1:] - codes[:, :1]).norm(dim=2).sum(dim=1).mean()
