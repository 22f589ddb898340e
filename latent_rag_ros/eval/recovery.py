"""Recovery attack of the paper (section II-B): learn to invert a protection from black-box pairs.

The attacker feeds images of a split DISJOINT from the evaluation split through the protection,
trains a restoration network with an L1 loss on (protected -> original) pairs, then the
evaluation split's protected queries are restored and compared with their originals (PSNR,
SSIM). Two attackers: a small U-Net (Ronneberger et al.; the usual attacker of prior work) and
a small Restormer (Zamir et al.; MDTA transposed attention + GDFN gated feed-forward), the
stronger attacker the paper uses. Both are written here in a few dozen lines because no
installed library ships them (torchvision has neither; the official Restormer is a research
repository, not a package). Both predict a residual on top of their input, with the last layer
initialised to zero, so the untrained attacker returns the protected image itself.

The attacker works at a fixed resolution (``height`` x ``width``, default 128x64, Market-1501's native
crop size); restored images are resized back to each original crop's size and compared with the
untouched original, so choose an attack resolution at least as large as the crops (a smaller one
costs the attacker the detail lost by resizing, in the "before training" score as well).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from latent_rag_ros.core.imaging import bgr_to_tensor, tensor_to_bgr
from latent_rag_ros.eval.metrics import image_similarity

RECOVERY_MODELS = ("unet", "restormer")


@dataclass
class RecoveryConfig:
    """Attacker settings: network, bounded training budget, attack resolution, seed."""

    model: str = "unet"
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    height: int = 128
    width: int = 64
    channels: int = 32
    seed: int = 0
    augment: bool = True          # random horizontal flips of the training pairs
    eval_batch_size: int = 64
    device: str = "cpu"           # "cuda" trains faster; determinism is only promised on CPU


@dataclass
class RecoveryResult:
    """PSNR/SSIM of recovered vs original queries, before and after training, plus the loss curve."""

    ssim_mean: float
    psnr_mean: float
    psnr_mean_finite: float | None
    before_ssim_mean: float
    before_psnr_mean: float
    losses: list[float]
    recovered: list[np.ndarray] = field(repr=False)
    model: str = "unet"
    steps: int = 0
    n_train: int = 0
    n_eval: int = 0
    train_seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        """Plain-dict summary for the report (no images)."""
        return {
            "ssim_mean": self.ssim_mean, "psnr_mean": self.psnr_mean,
            "psnr_mean_finite": self.psnr_mean_finite,
            "before_ssim_mean": self.before_ssim_mean, "before_psnr_mean": self.before_psnr_mean,
            "final_loss": self.losses[-1] if self.losses else None, "model": self.model,
            "steps": self.steps, "n_train": self.n_train, "n_eval": self.n_eval,
            "train_seconds": self.train_seconds,
        }


# ------------------------------------------------------------------------------------------ U-Net


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Three-level U-Net (channels c, 2c, 4c, bottleneck 8c) predicting a residual image."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.enc = nn.ModuleList([_block(3, c), _block(c, 2 * c), _block(2 * c, 4 * c)])
        self.mid = _block(4 * c, 8 * c)
        self.up = nn.ModuleList([nn.Conv2d(8 * c, 4 * c, 1), nn.Conv2d(4 * c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)])
        self.dec = nn.ModuleList([_block(8 * c, 4 * c), _block(4 * c, 2 * c), _block(2 * c, c)])
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for enc in self.enc:
            h = enc(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.mid(h)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False))
            h = dec(torch.cat([h, skip], dim=1))
        return x + self.head(h)


# ------------------------------------------------------------------------------------- Restormer


class _ChannelNorm(nn.Module):
    """LayerNorm over channels at every pixel (Restormer's "WithBias" layer norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention: attention across channels, linear in pixel count."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU-gated depthwise-conv features."""

    def __init__(self, dim: int, expansion: float = 2.66) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.inp = nn.Conv2d(dim, hidden * 2, 1)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dw(self.inp(x)).chunk(2, dim=1)
        return self.out(F.gelu(a) * g)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.attn = _ChannelNorm(dim), MDTA(dim, heads)
        self.n2, self.ffn = _ChannelNorm(dim), GDFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


class SmallRestormer(nn.Module):
    """A two-scale Restormer (dims c, 2c, 4c; heads 1, 2, 4) with a global residual."""

    def __init__(self, channels: int = 32, blocks: tuple[int, int, int] = (1, 2, 2)) -> None:
        super().__init__()
        c = channels
        self.embed = nn.Conv2d(3, c, 3, padding=1)
        self.enc1 = nn.Sequential(*[TransformerBlock(c, 1) for _ in range(blocks[0])])
        self.down1 = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1), nn.PixelUnshuffle(2))
        self.enc2 = nn.Sequential(*[TransformerBlock(2 * c, 2) for _ in range(blocks[1])])
        self.down2 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.PixelUnshuffle(2))
        self.latent = nn.Sequential(*[TransformerBlock(4 * c, 4) for _ in range(blocks[2])])
        self.up2 = nn.Sequential(nn.Conv2d(4 * c, 8 * c, 3, padding=1), nn.PixelShuffle(2))
        self.reduce2 = nn.Conv2d(4 * c, 2 * c, 1)
        self.dec2 = nn.Sequential(*[TransformerBlock(2 * c, 2) for _ in range(blocks[1])])
        self.up1 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
        self.dec1 = nn.Sequential(*[TransformerBlock(2 * c, 1) for _ in range(blocks[0])])
        self.head = nn.Conv2d(2 * c, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        e1 = self.enc1(self.embed(xp))
        e2 = self.enc2(self.down1(e1))
        lat = self.latent(self.down2(e2))
        d2 = self.dec2(self.reduce2(torch.cat([self.up2(lat), e2], dim=1)))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return x + self.head(d1)[..., :h, :w]


def build_recovery_net(name: str, channels: int = 32) -> nn.Module:
    """Build the attacker network ``unet`` or ``restormer``."""
    if name == "unet":
        return SmallUNet(channels)
    if name == "restormer":
        return SmallRestormer(channels)
    raise ValueError(f"unknown recovery model {name!r}; expected one of {RECOVERY_MODELS}")


# ------------------------------------------------------------------------------------- training


def _to_tensor(crops: Sequence[np.ndarray], cfg: RecoveryConfig) -> torch.Tensor:
    return bgr_to_tensor(list(crops), (cfg.height, cfg.width), cfg.device)


def train_recovery(protected: Sequence[np.ndarray], original: Sequence[np.ndarray], cfg: RecoveryConfig,
                   progress: bool = False) -> tuple[nn.Module, list[float]]:
    """Train the attacker for ``cfg.steps`` Adam steps of L1 loss; deterministic for ``cfg.seed`` on CPU."""
    if len(protected) != len(original) or not protected:
        raise ValueError(f"need equal, non-empty pair lists (got {len(protected)} and {len(original)})")
    x_all, y_all = _to_tensor(protected, cfg), _to_tensor(original, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_recovery_net(cfg.model, cfg.channels).to(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    losses: list[float] = []
    n = x_all.shape[0]
    order = torch.randperm(n, generator=gen)
    cursor = 0
    steps = range(cfg.steps)
    if progress:
        steps = tqdm(steps, desc=f"recovery {cfg.model}", unit="step", leave=False, disable=None)
    net.train()
    for _ in steps:
        bs = min(cfg.batch_size, n)
        if cursor + bs > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + bs]
        cursor += bs
        x, y = x_all[idx], y_all[idx]
        if cfg.augment:
            flip = (torch.rand(bs, generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        loss = F.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return net, losses


@torch.no_grad()
def recover(net: nn.Module, protected: Sequence[np.ndarray], cfg: RecoveryConfig) -> list[np.ndarray]:
    """Restore protected crops with a trained attacker; uint8 BGR at the attack resolution."""
    net.eval()
    out: list[np.ndarray] = []
    for s in range(0, len(protected), cfg.eval_batch_size):
        x = _to_tensor(protected[s:s + cfg.eval_batch_size], cfg)
        out.extend(tensor_to_bgr(net(x).clamp(0, 1)))
    return out


def recovery_attack(train_protected: Sequence[np.ndarray], train_original: Sequence[np.ndarray],
                    eval_protected: Sequence[np.ndarray], eval_original: Sequence[np.ndarray],
                    cfg: RecoveryConfig | None = None, progress: bool = False) -> RecoveryResult:
    """Train on the attacker's pairs, then report PSNR/SSIM of restored eval queries vs originals.

    ``recovered`` holds the restored eval crops resized back to their original sizes (for figures).
    """
    cfg = cfg or RecoveryConfig()
    if len(eval_protected) != len(eval_original) or not eval_protected:
        raise ValueError("need equal, non-empty evaluation lists")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        untrained = build_recovery_net(cfg.model, cfg.channels).to(cfg.device)
    before = image_similarity(_to_sizes(recover(untrained, eval_protected, cfg), eval_original), eval_original)
    t0 = time.perf_counter()
    net, losses = train_recovery(train_protected, train_original, cfg, progress)
    seconds = time.perf_counter() - t0
    restored = _to_sizes(recover(net, eval_protected, cfg), eval_original)
    after = image_similarity(restored, eval_original)
    return RecoveryResult(
        ssim_mean=float(after["ssim_mean"]), psnr_mean=float(after["psnr_mean"]),
        psnr_mean_finite=after["psnr_mean_finite"],  # type: ignore[arg-type]
        before_ssim_mean=float(before["ssim_mean"]), before_psnr_mean=float(before["psnr_mean"]),
        losses=losses, recovered=restored, model=cfg.model, steps=cfg.steps, n_train=len(train_protected),
        n_eval=len(eval_protected), train_seconds=seconds)


def _to_sizes(images: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Resize each image to the size of its counterpart in ``like`` (bicubic)."""
    return [img if img.shape == o.shape else cv2.resize(img, (o.shape[1], o.shape[0]), interpolation=cv2.INTER_CUBIC)
            for img, o in zip(images, like, strict=True)]


def identity_result(eval_original: Sequence[np.ndarray], cfg: RecoveryConfig | None = None) -> RecoveryResult:
    """The "no protection" row: nothing to recover, the attacker already holds the original."""
    cfg = cfg or RecoveryConfig()
    return RecoveryResult(1.0, math.inf, None, 1.0, math.inf, [], [o.copy() for o in eval_original],
                          model="none", steps=0, n_train=0, n_eval=len(eval_original))
