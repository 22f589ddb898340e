"""``latent-rag train anonymiser``: train PrivacyReID's / SecureReID's anonymiser on tracked people (issue 16 item 4).

The algorithm, read from the papers and their released code (junwuzhang19/privacy-reid,
shentt67/SecureReID; read, not copied), is the same "GCR" joint training for both:

* ``G`` (pix2pix U-Net) maps the raw crop O to the anonymised crop P = G(O); L1 to a *desensitised*
  target M (mosaic, blur or Gaussian noise of O), weight 100, plus a conditional GAN loss with a
  PatchGAN ``D1`` on (O, P) (real pair: (O, M)).
* ``G_R`` (the owner's recovery U-Net) maps P back: L1(G_R(P), O), weight 100, plus a GAN loss with
  ``D2`` on (P, G_R(P)) (real pair: (P, O)).
* A re-ID model ``C`` learns from both O and P (ID + triplet losses), so P stays matchable.
* *Supervision upgradation*: once the anonymised images are "anonymous enough" (PSNR(O, P) <
  PSNR(O, M) + 1.0 dB and SSIM(O, P) < SSIM(O, M) + 0.05, the released config) and the validation
  Rank-1 improved, a frozen copy of ``G`` replaces the desensitisation as the L1 target M.
* SecureReID (the journal extension) adds ISED at test time only (``models.anonymiser.ised_*``):
  the published image is P plus an identity-seeded deviation, removed with the identity's key
  before recovery or matching; training is unchanged. The Latent-RAG paper compares SecureReID with
  ISED left out, as ``eval.anonymisers`` does in the tables.

What the server sees: P (PrivacyReID; SecureReID without ISED). Key: none for PrivacyReID; the
per-identity ISED key for SecureReID.

**Deviations (CPU, and the evaluation's fixed re-ID model):** ``C`` is the evaluation's primary
re-ID model, *frozen* (the Latent-RAG protocol judges every method with a model trained on raw
images, so G must serve that model instead of retraining it); its ID + triplet loss on P becomes a
batch-hard triplet on C(P) with the track labels plus 1 - cos(C(P), C(O)). Upgradation is checked on
a fixed validation batch every ``upgrade_every`` steps, with the mean cosine C(P)·C(O) standing in for
validation Rank-1. Networks: ``ngf`` 8 U-Nets at 128x64 (papers: 64 at 256x128), a 3-layer PatchGAN
with 16 base channels, a few hundred steps. Desensitisation target per method (both repositories
ship mosaic 24 px at height 384 as the default and Gaussian noise sigma 0.5 in their config file):
PrivacyReID mosaic (the README's command; 8 px at height 128), SecureReID noise 0.5.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.training.reid import VTEST, batch_hard_triplet, pk_batch

TARGETS = {"privacyreid": "mosaic", "securereid": "noise"}


@dataclass
class AnonymiserTrainConfig:
    """What ``train anonymiser`` does: method, data, target, networks, loss weights and budget."""

    method: str = "privacyreid"
    data: str = VTEST
    train_frames: tuple[int, int] = (0, 480)
    train_step: int = 4            # every 4th frame (tracking cost; the re-ID model used every 2nd)
    target: str = ""               # mosaic | blur | noise; "" = the method's (see TARGETS)
    mosaic_block: int = 8          # released 24 px at height 384 -> 8 at 128
    blur_radius: float = 4.0       # released 12 at height 384 -> 4 at 128
    noise_sigma: float = 0.5
    ngf: int = 8
    depth: int = 5
    ndf: int = 16
    ids_per_batch: int = 4         # P x K = 16 crops per step
    per_id: int = 4
    steps: int = 600
    minutes: float = 6.0
    lr: float = 3.5e-4             # released: Adam 3.5e-4, betas (0.5, 0.999)
    l1_weight: float = 100.0
    rec_weight: float = 100.0
    gan_weight: float = 1.0
    reid_weight: float = 1.0
    margin: float = 0.3
    upgrade_every: int = 100
    psnr_margin: float = 1.0
    ssim_margin: float = 0.05
    min_track: int = 4
    seed: int = 0
    threads: int = 1


def desensitise(x: torch.Tensor, cfg: AnonymiserTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The desensitised target M of images in [-1, 1]: mosaic (top-left pixel per block), blur or noise."""
    kind = cfg.target or TARGETS[cfg.method]
    if kind == "mosaic":
        b = cfg.mosaic_block
        h, w = x.shape[-2:]
        return x[:, :, ::b, ::b].repeat_interleave(b, 2).repeat_interleave(b, 3)[:, :, :h, :w]
    if kind == "blur":
        sigma = cfg.blur_radius
        k = int(2 * math.ceil(3 * sigma) + 1)
        t = torch.arange(k, dtype=x.dtype) - k // 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        g = (g / g.sum()).view(1, 1, 1, k).repeat(3, 1, 1, 1)
        y = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), g, groups=3)
        return F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), g.transpose(2, 3), groups=3)
    if kind == "noise":   # sigma in [0, 1] image units, as released; [-1, 1] doubles it
        return (x + 2 * cfg.noise_sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    raise ValueError(f"anonymiser target {kind!r}: expected mosaic, blur or noise")


def patch_discriminator(ndf: int) -> nn.Module:
    """A 3-layer PatchGAN on a (condition, image) pair: 6 input channels -> a map of real/fake logits."""
    return nn.Sequential(
        nn.Conv2d(6, ndf, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 4, 1, 4, 1, 1))


def _gan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def psnr_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and a global-statistics SSIM of two batches in [-1, 1] (the upgradation gate only)."""
    a, b = (a + 1) / 2, (b + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = float((10 * torch.log10(1.0 / mse)).mean())
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ma, mb = a.flatten(1).mean(1), b.flatten(1).mean(1)
    va, vb = a.flatten(1).var(1), b.flatten(1).var(1)
    cov = ((a.flatten(1) - ma[:, None]) * (b.flatten(1) - mb[:, None])).mean(1)
    ssim = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return psnr, float(ssim.mean())


def train_anonymiser(cfg: AnonymiserTrainConfig, train: Any, reid: nn.Module, out_path: str | Path,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train G, G_R (and D1, D2) on ``train`` (labelled crops) against the frozen ``reid``; save G and G_R.

    ``train``: ``images`` (uint8 BGR), ``pids`` (the cli passes ``eval.tracks.tracked_crops``);
    ``reid``: an encoder of [0,1] RGB images to unit vectors (the evaluation's primary model).
    Returns the record also written beside the checkpoint (``<out>.json``).
    """
    from latent_rag_ros.models.anonymiser import ANONYMISER_SIZE, AnonymiserNet, save_anonymiser, to_unit
    from latent_rag_ros.training.runs import Deadline, hardware, set_threads, write_json

    if cfg.method not in TARGETS:
        raise ValueError(f"--method {cfg.method!r}: expected one of {', '.join(TARGETS)}")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    names = sorted({p for p in train.pids if train.pids.count(p) >= cfg.min_track})
    if len(names) < cfg.ids_per_batch:
        raise ValueError(f"{cfg.data}: only {len(names)} tracks of >= {cfg.min_track} crops in frames "
                         f"{cfg.train_frames}; need >= {cfg.ids_per_batch} (ids_per_batch)")
    keep = [i for i, p in enumerate(train.pids) if p in set(names)]
    x_all = to_unit([train.images[i] for i in keep], ANONYMISER_SIZE)
    cls = {n: c for c, n in enumerate(names)}
    by_id: list[list[int]] = [[] for _ in names]
    for j, i in enumerate(keep):
        by_id[cls[train.pids[i]]].append(j)
    val = torch.randperm(len(keep), generator=gen)[:32]
    x_val = x_all[val]
    log(f"data: {len(keep)} crops of {len(names)} tracks; target {cfg.target or TARGETS[cfg.method]}")

    g, g_r = AnonymiserNet(cfg.ngf, cfg.depth), AnonymiserNet(cfg.ngf, cfg.depth)
    d1, d2 = patch_discriminator(cfg.ndf), patch_discriminator(cfg.ndf)
    reid = reid.eval().requires_grad_(False)
    betas = (0.5, 0.999)
    opt_g = torch.optim.Adam([*g.parameters(), *g_r.parameters()], lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam([*d1.parameters(), *d2.parameters()], lr=cfg.lr, betas=betas)
    upgraded: nn.Module | None = None
    best_cos = -1.0
    deadline = Deadline(cfg.minutes)
    history: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    step = 0
    for step in range(1, cfg.steps + 1):
        g.train(), g_r.train(), d1.train(), d2.train()
        idx, lab = pk_batch(by_id, cfg.ids_per_batch, cfg.per_id, gen)
        o = x_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        o = torch.where(flip.view(-1, 1, 1, 1), o.flip(3), o)
        with torch.no_grad():
            m = upgraded(o) if upgraded is not None else desensitise(o, cfg, gen)
            f_o = reid((o + 1) / 2)
        p = g(o)
        r = g_r(p)
        # discriminators: D1 real (O, M) vs fake (O, P); D2 real (P, O) vs fake (P, R)
        l_d = (_gan(d1(torch.cat([o, m], 1)), True) + _gan(d1(torch.cat([o, p.detach()], 1)), False)
               + _gan(d2(torch.cat([p.detach(), o], 1)), True) + _gan(d2(torch.cat([p.detach(), r.detach()], 1)),
                                                                       False))
        opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        opt_d.step()
        f_p = reid((p + 1) / 2)
        l_reid = batch_hard_triplet(f_p, torch.tensor(lab), cfg.margin) + (1 - (f_p * f_o).sum(1)).mean()
        l_gan = _gan(d1(torch.cat([o, p], 1)), True) + _gan(d2(torch.cat([p, r], 1)), True)
        l_l1, l_rec = F.l1_loss(p, m), F.l1_loss(r, o)
        loss = cfg.gan_weight * l_gan + cfg.l1_weight * l_l1 + cfg.rec_weight * l_rec + cfg.reid_weight * l_reid
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for k, v in (("d", l_d), ("gan", l_gan), ("l1", l_l1), ("rec", l_rec), ("reid", l_reid)):
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if step % cfg.upgrade_every == 0:
            rec = {"step": step, **{k: round(v / cfg.upgrade_every, 4) for k, v in sums.items()},
                   "s": round(deadline.elapsed(), 1)}
            sums = {}
            g.eval()
            with torch.no_grad():
                pv = g(x_val)
                mv = desensitise(x_val, cfg, torch.Generator().manual_seed(cfg.seed))
                cos = float((reid((pv + 1) / 2) * reid((x_val + 1) / 2)).sum(1).mean())
            (psnr_p, ssim_p), (psnr_m, ssim_m) = psnr_ssim(x_val, pv), psnr_ssim(x_val, mv)
            anonymous = psnr_p < psnr_m + cfg.psnr_margin and ssim_p < ssim_m + cfg.ssim_margin
            rec.update(psnr_op=round(psnr_p, 2), ssim_op=round(ssim_p, 3), psnr_om=round(psnr_m, 2),
                       ssim_om=round(ssim_m, 3), cosine=round(cos, 4), anonymous_enough=anonymous)
            if anonymous and cos > best_cos:   # supervision upgradation: G's own output becomes the target
                best_cos = cos
                upgraded = copy.deepcopy(g).eval().requires_grad_(False)
                rec["upgraded"] = True
            history.append(rec)
            log(json.dumps(rec))
        if deadline.expired():
            log(f"time budget of {cfg.minutes} min reached at step {step}")
            break
    g.eval(), g_r.eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": cfg.method, "target": cfg.target or TARGETS[cfg.method], "steps_done": step,
            "reid": str(getattr(reid, "name", type(reid).__name__)), "height": ANONYMISER_SIZE[0],
            "width": ANONYMISER_SIZE[1], "upgraded": upgraded is not None}
    save_anonymiser(out, cfg.method, g, g_r, meta)
    record = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), **meta,
              "train_seconds": round(deadline.elapsed(), 1), "n_train_crops": len(keep), "n_train_ids": len(names),
              "n_parameters_g": sum(p.numel() for p in g.parameters()), "history": history, "hardware": hardware(),
              "checkpoint": out.name, "checkpoint_bytes": out.stat().st_size}
    write_json(out.with_suffix(".json"), record)
    log(f"{cfg.method}: {step} steps in {record['train_seconds']} s -> {out} ({record['checkpoint_bytes']} bytes)")
    return record

