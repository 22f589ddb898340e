"""GAN training of a small StyleGAN3 generator on person crops (``latent-rag train generator``).

StyleGAN2/3 recipe at toy scale: non-saturating logistic loss, lazy R1 on the discriminator
(:mod:`.losses`), DiffAugment on real and fake images before D (:mod:`.augment`), Adam with
betas (0, 0.99) (D's lr and betas adjusted for lazy regularisation as in StyleGAN2), and an
exponential moving average ``G_ema`` whose half-life ramps up with the images shown. The
discriminator is :class:`.discriminator.ResNetDiscriminator`. The generator is the project's
StyleGAN3-T (``square=False``: ``H x H/2`` like StyleGAN-Human) with ``lrelu_upsampling=1`` by default
(official: 2): about 4x cheaper on a CPU, at the price of part of the alias-free equivariance.

Optional reconstruction warm-up (``recon_weight > 0``): a small E4E encoder is trained jointly,
and G also minimises ``recon_weight * (L2 + L1 + (1 - SSIM))`` between crops and ``G.synthesis(E(crop))``.
This is not part of StyleGAN: it shapes G so that encoded W+ codes of real people regenerate them,
which a tiny GAN trained for minutes on a CPU would otherwise not learn. Its encoder is saved as
``encoder_warm.pt`` (official E4E layout) and can seed ``latent-rag train encoder --init``.

Determinism: every random draw comes from one ``torch.Generator`` seeded by ``seed`` whose state is
checkpointed with the networks and optimizers, so on CPU a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from latent_rag_ros.fileio import atomic_write
from latent_rag_ros.models.e4e import build_e4e, save_e4e
from latent_rag_ros.models.generator_io import build_generator, save_generator
from latent_rag_ros.training import checkpoints as ck
from latent_rag_ros.training.augment import diff_augment, parse_policy, random_xflip
from latent_rag_ros.training.configs import GeneratorTrainConfig
from latent_rag_ros.training.data import CropSet
from latent_rag_ros.training.discriminator import ResNetDiscriminator
from latent_rag_ros.training.evaluate import image_grid, save_png
from latent_rag_ros.training.losses import d_logistic_loss, g_nonsaturating_loss, r1_penalty, reconstruction_loss
from latent_rag_ros.training.runs import (
    Deadline,
    LossMeter,
    config_dict,
    hardware,
    identity_mismatch,
    set_threads,
    write_history,
    write_json,
)

LOG = logging.getLogger(__name__)
KIND = "generator"


@dataclass
class Networks:
    """Everything a generator run trains (``E``/``opt_e`` only with the reconstruction warm-up)."""

    G: nn.Module
    G_ema: nn.Module
    D: nn.Module
    E: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_e: torch.optim.Optimizer | None


def build_networks(cfg: GeneratorTrainConfig) -> Networks:
    """Fresh G, G_ema, D (and E), seeded by ``cfg.seed``, with StyleGAN's Adam settings."""
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = build_generator("stylegan3", cfg.generator_kwargs()).to(device).train().requires_grad_(True)
        D = ResNetDiscriminator(G.img_height, G.img_width, 3, channel_base=16 * cfg.d_channels,
                                channel_max=cfg.d_channels).to(device)
        E = None
        if cfg.recon_weight > 0:
            E = build_e4e(num_ws=G.num_ws, input_size=(G.img_height, G.img_width), width_mult=cfg.e_width,
                          num_layers=tuple(cfg.e_blocks), w_dim=G.w_dim, style_width=cfg.e_style_width).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=(0.0, 0.99), eps=1e-8)
    ratio = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy regularisation (StyleGAN2, appendix B)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    opt_e = torch.optim.Adam(E.parameters(), lr=cfg.e_lr, betas=(0.9, 0.99)) if E is not None else None
    return Networks(G, G_ema, D, E, opt_g, opt_d, opt_e)


def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``G_ema <- beta * G_ema + (1 - beta) * G`` for parameters; buffers are copied."""
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)


def ema_beta(cfg: GeneratorTrainConfig, cur_nimg: int) -> float:
    """StyleGAN's EMA decay per step: half-life ``ema_kimg`` thousand images, ramped up early on."""
    ema_nimg = cfg.ema_kimg * 1000.0
    if cfg.ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * cfg.ema_rampup)
    return 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))


def train_step(nets: Networks, cfg: GeneratorTrainConfig, data: torch.Tensor, step: int,
               gen: torch.Generator) -> dict[str, float]:
    """One iteration: D (logistic, + lazy R1 every ``r1_interval`` steps), then G (+ reconstruction)."""
    G, D, E = nets.G, nets.D, nets.E
    device = data.device
    policy = parse_policy(cfg.augment)

    def aug(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, policy, gen)

    idx = torch.randint(0, data.shape[0], (cfg.batch,), generator=gen).to(device)
    real = random_xflip(data[idx], cfg.xflip, gen)  # [-1, 1]
    out: dict[str, float] = {}

    # D main phase: real up, fake down (G's tracked averages update here, as in StyleGAN3).
    D.requires_grad_(True)
    z = torch.randn(cfg.batch, G.z_dim, generator=gen).to(device)
    with torch.no_grad():
        fake = G(z, update_emas=True)
    d_loss = d_logistic_loss(D(aug(real)), D(aug(fake)))
    nets.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.opt_d.step()
    out["d_loss"] = float(d_loss.detach())

    # D regularisation phase (lazy R1 on real images, scaled by the interval).
    if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
        x = real.detach().requires_grad_(True)
        penalty = r1_penalty(x, D(aug(x)))
        nets.opt_d.zero_grad(set_to_none=True)
        (penalty * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
        nets.opt_d.step()
        out["r1"] = float(penalty.detach())

    # G phase: non-saturating loss on z samples (+ reconstruction of the real batch through E).
    D.requires_grad_(False)
    z = torch.randn(cfg.batch, G.z_dim, generator=gen).to(device)
    ws = G.mapping(z)
    if E is not None:
        ws = torch.cat([ws, E((real + 1) * 0.5)])
    images = G.synthesis(ws)
    g_loss = g_nonsaturating_loss(D(aug(images[: cfg.batch])))
    total = g_loss
    out["g_loss"] = float(g_loss.detach())
    if E is not None:
        rec_loss, parts = reconstruction_loss((images[cfg.batch:] + 1) * 0.5, (real + 1) * 0.5,
                                              cfg.recon_l2, cfg.recon_l1, cfg.recon_ssim)
        total = total + cfg.recon_weight * rec_loss
        out.update({"rec_loss": float(rec_loss.detach()), "rec_ssim": parts["ssim"]})
    nets.opt_g.zero_grad(set_to_none=True)
    if nets.opt_e is not None:
        nets.opt_e.zero_grad(set_to_none=True)
    total.backward()
    nets.opt_g.step()
    if nets.opt_e is not None:
        nets.opt_e.step()
    D.requires_grad_(True)
    return out


def _state(nets: Networks, cfg: GeneratorTrainConfig, cur_nimg: int, gen: torch.Generator,
           history: list[dict[str, Any]], fingerprint: str, elapsed: float) -> dict[str, Any]:
    state = {"config": config_dict(cfg), "cur_nimg": int(cur_nimg), "data_fingerprint": fingerprint,
             "elapsed_s": float(elapsed), "history": list(history), "rng": ck.capture_rng(gen),
             "G": nets.G.state_dict(), "G_ema": nets.G_ema.state_dict(), "D": nets.D.state_dict(),
             "opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict()}
    if nets.E is not None and nets.opt_e is not None:
        state.update({"E": nets.E.state_dict(), "opt_e": nets.opt_e.state_dict()})
    return state


def _restore(nets: Networks, ckpt: dict[str, Any], path: Path) -> None:
    names = ["G", "G_ema", "D", "opt_g", "opt_d"] + (["E", "opt_e"] if nets.E is not None else [])
    targets = {"G": nets.G, "G_ema": nets.G_ema, "D": nets.D, "opt_g": nets.opt_g, "opt_d": nets.opt_d,
               "E": nets.E, "opt_e": nets.opt_e}
    for name in names:
        ck.load_state(targets[name], ckpt.get(name), name, path)


def resolve_resume(out_dir: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to resume from: an explicit path, the run's newest (``True``), or None."""
    if isinstance(resume, str | Path) and str(resume):
        return Path(resume)
    if resume:
        latest = ck.latest_checkpoint(out_dir)
        if latest is None:
            LOG.warning("--resume: no checkpoint in %s, starting a new run", ck.checkpoint_dir(out_dir))
        return latest
    return None


def _save_outputs(nets: Networks, cfg: GeneratorTrainConfig, out_dir: Path, crops: CropSet, step: int,
                  total_elapsed: float) -> dict[str, str]:
    source = {"kind": "trained", "trainer": "latent-rag train generator", "steps": int(step),
              "data": crops.meta.get("source", ""), "frames": crops.meta.get("frames", ""),
              "crops": len(crops), "data_fingerprint": crops.fingerprint(), "seed": cfg.seed,
              "recon_weight": cfg.recon_weight}
    st, js = save_generator(nets.G_ema, out_dir / "generator", source=source)
    files = {"generator": str(st), "generator_json": str(js)}
    G = nets.G_ema
    device = next(G.parameters()).device
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        z = torch.randn(16, G.z_dim).to(device)
        rows = [(G(z[:8]) + 1) * 0.5, (G(z[8:]) + 1) * 0.5]
        real = crops.as_float()[: min(8, len(crops))].to(device)
        if nets.E is not None:
            was_training = nets.E.training
            nets.E.eval()
            rows += [real, (G.synthesis(nets.E(real)) + 1) * 0.5]
            nets.E.train(was_training)
    files["samples"] = str(save_png(out_dir / "samples.png", image_grid(rows)))
    if nets.E is not None:
        enc_path = out_dir / "encoder_warm.pt"
        atomic_write(enc_path, lambda tmp: save_e4e(nets.E.eval(), tmp, {"trained_steps": int(step),
                                                                              "trainer": "generator warm-up"}))
        nets.E.train()
        files["encoder_warm"] = str(enc_path)
    return files


def train_generator(
    cfg: GeneratorTrainConfig, crops: CropSet, out_dir: str | Path, resume: bool | str | Path = False,
    progress: bool = True, on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) a generator on ``crops``; writes checkpoints and outputs to ``out_dir``.

    Outputs: ``generator.safetensors`` + ``generator.json`` (G_ema, the project's format),
    ``samples.png``, ``train_log.jsonl``, ``train_summary.json``, ``checkpoints/`` (and
    ``encoder_warm.pt`` with the reconstruction warm-up). Returns the summary dict.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    deadline = Deadline(cfg.minutes)
    nets = build_networks(cfg)
    if crops.size != (nets.G.img_height, nets.G.img_width):
        raise ValueError(f"crops are {crops.size[0]}x{crops.size[1]}, the generator makes "
                         f"{nets.G.img_height}x{nets.G.img_width}")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, cur_nimg, prior_elapsed = 0, 0, 0.0
    history: list[dict[str, Any]] = []
    fingerprint = crops.fingerprint()
    ckpt_path = resolve_resume(out, resume)
    if ckpt_path is not None:
        ckpt = ck.load_checkpoint(ckpt_path, KIND, ("config", "G", "G_ema", "D", "opt_g", "opt_d", "rng"))
        diff = identity_mismatch(ckpt["config"], config_dict(cfg))
        if diff:
            raise ValueError(f"{ckpt_path}: cannot resume with different settings ({'; '.join(diff)})")
        if ckpt.get("data_fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path}: the training data differ from the checkpoint's")
        _restore(nets, ckpt, ckpt_path)
        ck.restore_rng(ckpt["rng"], gen, ckpt_path)
        step, cur_nimg = int(ckpt["step"]), int(ckpt.get("cur_nimg", 0))
        prior_elapsed = float(ckpt.get("elapsed_s", 0.0))
        history = list(ckpt.get("history", []))
        LOG.info("resumed %s at step %d", ckpt_path, step)

    data = (crops.as_float() * 2.0 - 1.0).to(cfg.device)
    meter = LossMeter()
    stopped = "steps"
    last_saved = step if ckpt_path is not None else -1
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="train G", unit="step", disable=not progress or None,
               dynamic_ncols=True)
    t_last = time.monotonic()
    try:
        while step < cfg.steps:
            if deadline.expired():
                stopped = "time"
                break
            losses = train_step(nets, cfg, data, step, gen)
            step += 1
            cur_nimg += cfg.batch
            update_ema(nets.G_ema, nets.G, ema_beta(cfg, cur_nimg))
            meter.add(losses, step)
            if on_step is not None:
                on_step(step, losses)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.monotonic()
                entry = {"step": step, "kimg": cur_nimg / 1000.0, "sec_per_step": (now - t_last) / max(1, meter.count),
                         **{k: round(v, 6) for k, v in meter.flush().items()}}
                t_last = now
                history.append(entry)
                bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k in ("d_loss", "g_loss", "rec_ssim")})
                write_history(out / "train_log.jsonl", history)
            if step % cfg.checkpoint_every == 0:
                ck.save_checkpoint(out, KIND, step, _state(nets, cfg, cur_nimg, gen, history, fingerprint,
                                                           prior_elapsed + deadline.elapsed()))
                last_saved = step
    finally:
        bar.close()
    if last_saved != step:
        ck.save_checkpoint(out, KIND, step, _state(nets, cfg, cur_nimg, gen, history, fingerprint,
                                                   prior_elapsed + deadline.elapsed()))
    total_elapsed = prior_elapsed + deadline.elapsed()
    files = _save_outputs(nets, cfg, out, crops, step, total_elapsed)
    summary = {"kind": KIND, "step": step, "kimg": cur_nimg / 1000.0, "stopped": stopped,
               "elapsed_s_this_run": round(deadline.elapsed(), 1), "elapsed_s_total": round(total_elapsed, 1),
               "config": config_dict(cfg), "data": {**crops.meta, "crops": len(crops), "fingerprint": fingerprint},
               "hardware": hardware(), "files": files, "last_losses": history[-1] if history else {}}
    write_json(out / "train_summary.json", summary)
    return summary
