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

RECOVERY_MODELS = ("unet", "restormer", "restormer-paper", "restormer-cpu")


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
    max_seconds: float | None = None  # stop training after this wall time (steps done are reported)


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

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.proj = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU-gated depthwise-conv features."""

    def __init__(self, dim: int, expansion: float = 2.66, bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.inp = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dw(self.inp(x)).chunk(2, dim=1)
        return self.out(F.gelu(a) * g)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float = 2.66, bias: bool = True) -> None:
        super().__init__()
        self.n1, self.attn = _ChannelNorm(dim), MDTA(dim, heads, bias)
        self.n2, self.ffn = _ChannelNorm(dim), GDFN(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


def _stage(dim: int, n: int, heads: int, expansion: float, bias: bool) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(dim, heads, expansion, bias) for _ in range(n)])


class Restormer(nn.Module):
    """Restormer (Zamir et al., CVPR 2022) with ``len(blocks)`` levels and a global residual.

    Level i works at ``dim * 2**i`` channels with ``heads[i]`` heads and ``blocks[i]`` transformer
    blocks (the last level is the latent). Down-sampling: 3x3 conv halving channels + pixel-unshuffle;
    up-sampling: 3x3 conv doubling channels + pixel-shuffle; decoder skips are concatenated and
    reduced by a 1x1 conv, except at level 0, where the decoder and ``refinement`` blocks run at
    ``2 * dim``. Inputs whose height or width do not divide by ``2**(levels-1)`` are reflect-padded
    and the output cropped back. The published model: ``dim=48, blocks=(4, 6, 6, 8), refinement=4,
    heads=(1, 2, 4, 8), ffn_expansion=2.66, bias=False``. The head starts at zero, so the untrained
    network returns its input.
    """

    def __init__(self, dim: int = 48, blocks: Sequence[int] = (4, 6, 6, 8), refinement: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        if len(blocks) != len(heads) or len(blocks) < 2:
            raise ValueError(f"Restormer: blocks {tuple(blocks)} and heads {tuple(heads)} need the same length >= 2")
        levels, c, e = len(blocks), dim, ffn_expansion
        self.factor = 2 ** (levels - 1)
        # modules are created in forward order so that a seed gives the same weights as before
        self.embed = nn.Conv2d(3, c, 3, padding=1, bias=bias)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(levels - 1):
            self.enc.append(_stage(c << i, blocks[i], heads[i], e, bias))
            self.down.append(nn.Sequential(nn.Conv2d(c << i, (c << i) // 2, 3, padding=1, bias=bias),
                                           nn.PixelUnshuffle(2)))
        self.latent = _stage(c << (levels - 1), blocks[-1], heads[-1], e, bias)
        self.up = nn.ModuleList()
        self.reduce = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            self.up.append(nn.Sequential(nn.Conv2d(c << (i + 1), c << (i + 2), 3, padding=1, bias=bias),
                                         nn.PixelShuffle(2)))
            self.reduce.append(nn.Conv2d(c << (i + 1), c << i, 1, bias=bias) if i else nn.Identity())
            self.dec.append(_stage(c << (i + 1) if i == 0 else c << i, blocks[i], heads[i], e, bias))
        self.refine = _stage(2 * c, refinement, heads[0], e, bias)
        self.head = nn.Conv2d(2 * c, 3, 3, padding=1, bias=bias)
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        t = self.embed(xp)
        skips = []
        for enc, down in zip(self.enc, self.down, strict=True):
            t = enc(t)
            skips.append(t)
            t = down(t)
        t = self.latent(t)
        for up, reduce, dec, skip in zip(self.up, self.reduce, self.dec, reversed(skips), strict=True):
            t = dec(reduce(torch.cat([up(t), skip], dim=1)))
        return x + self.head(self.refine(t))[..., :h, :w]


def SmallRestormer(channels: int = 32, blocks: tuple[int, int, int] = (1, 2, 2)) -> Restormer:  # noqa: N802
    """The demo's two-scale Restormer (dims c, 2c, 4c; heads 1, 2, 4; conv biases; no refinement)."""
    return Restormer(channels, blocks, refinement=0, heads=(1, 2, 4), ffn_expansion=2.66, bias=True)


# Named Restormer presets (keyword arguments of ``Restormer``); ``restormer`` is the small demo attacker
# whose width follows ``RecoveryConfig.channels``.
RESTORMER_PRESETS: dict[str, dict[str, object]] = {
    # Zamir et al., CVPR 2022, Table/code defaults: 26.1 M parameters
    "restormer-paper": {"dim": 48, "blocks": (4, 6, 6, 8), "refinement": 4, "heads": (1, 2, 4, 8),
                        "ffn_expansion": 2.66, "bias": False},
    # the largest 4-level layout measured to train ~30 min (batch 8, 128x64) on 2 CPU cores
    "restormer-cpu": {"dim": 24, "blocks": (2, 3, 3, 4), "refinement": 2, "heads": (1, 2, 4, 8),
                      "ffn_expansion": 2.66, "bias": False},
}


def build_recovery_net(name: str, channels: int = 32) -> nn.Module:
    """Build the attacker network ``unet``, ``restormer`` (small, width ``channels``) or a Restormer preset."""
    if name == "unet":
        return SmallUNet(channels)
    if name == "restormer":
        return SmallRestormer(channels)
    if name in RESTORMER_PRESETS:
        return Restormer(**RESTORMER_PRESETS[name])  # type: ignore[arg-type]
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
    t0 = time.perf_counter()
    for _ in steps:
        if cfg.max_seconds is not None and losses and time.perf_counter() - t0 > cfg.max_seconds:
            break
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
        losses=losses, recovered=restored, model=cfg.model, steps=len(losses), n_train=len(train_protected),
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
