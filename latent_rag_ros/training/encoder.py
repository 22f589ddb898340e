"""Training of an E4E-style W+ encoder for a frozen generator (``latent-rag train encoder``).

The encoder is :mod:`latent_rag_ros.models.e4e` (IR-SE backbone, map2style heads, ``w0 + deltas``
around ``latent_avg``). As in e4e (Tov et al. 2021): ``latent_avg`` is the generator's ``w_avg``,
deltas are unlocked one W+ layer at a time (``progressive_every`` steps each; 0 = all from the start)
and their norm is penalised (``delta_weight``). Losses through the frozen ``G.synthesis``: pixel L2 +
L1 + (1 - SSIM) (pytorch-msssim) and optionally an identity loss ``1 - cos(f(x), f(G(E(x))))`` with the
project's re-ID encoder. e4e's latent-code discriminator and LPIPS (no backbone weights here) are not used.

Resume and determinism rules are those of :mod:`.generator`. Output: ``encoder.pt`` in the official
E4E checkpoint layout (read by :func:`latent_rag_ros.models.e4e.load_e4e`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from latent_rag_ros.fileio import atomic_write, file_digest
from latent_rag_ros.models.e4e import build_e4e, load_e4e, save_e4e
from latent_rag_ros.models.generator_io import load_generator, own_format_paths
from latent_rag_ros.models.reid import load_reid
from latent_rag_ros.training import checkpoints as ck
from latent_rag_ros.training.augment import random_xflip
from latent_rag_ros.training.configs import EncoderTrainConfig
from latent_rag_ros.training.data import CropSet
from latent_rag_ros.training.evaluate import encode_regenerate, image_grid, save_png
from latent_rag_ros.training.generator import resolve_resume
from latent_rag_ros.training.losses import delta_norm, reconstruction_loss
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
KIND = "encoder"


def progressive_codes(encoder: nn.Module, images01: torch.Tensor, stage: int) -> torch.Tensor:
    """W+ codes with only the deltas of layers ``1..stage`` kept (e4e's progressive training)."""
    codes = encoder(images01)
    if stage >= codes.shape[1] - 1:
        return codes
    avg = encoder.latent_avg.unsqueeze(0)
    raw = codes - avg
    w0 = raw[:, :1]
    mask = (torch.arange(codes.shape[1], device=codes.device) <= stage).to(codes.dtype).view(1, -1, 1)
    return w0 + (raw - w0) * mask + avg


def stage_at(cfg: EncoderTrainConfig, step: int, num_ws: int) -> int:
    """Highest W+ layer whose delta is trained at ``step``."""
    if cfg.progressive_every <= 0:
        return num_ws - 1
    return min(num_ws - 1, step // cfg.progressive_every)


def build_encoder(cfg: EncoderTrainConfig, generator: nn.Module) -> nn.Module:
    """A fresh encoder for ``generator`` (``latent_avg = G.w_avg``) or the ``init`` checkpoint, in train mode."""
    size = (int(generator.img_height), int(generator.img_width))
    device = torch.device(cfg.device)
    if cfg.init:
        enc = load_e4e(cfg.init, num_ws=generator.num_ws, device=device, input_size=size)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            enc = build_e4e(num_ws=generator.num_ws, input_size=size, width_mult=cfg.width,
                            num_layers=tuple(cfg.blocks), w_dim=generator.w_dim, style_width=cfg.style_width,
                            latent_avg=generator.w_avg.detach().cpu())
    if enc.w_dim != generator.w_dim or enc.num_ws != generator.num_ws:
        raise ValueError(f"encoder W+ {enc.num_ws}x{enc.w_dim} does not fit the generator's "
                         f"{generator.num_ws}x{generator.w_dim}")
    return enc.to(device).train().requires_grad_(True)


def encoder_step(encoder: nn.Module, generator: nn.Module, opt: torch.optim.Optimizer, cfg: EncoderTrainConfig,
                 data01: torch.Tensor, step: int, gen: torch.Generator, reid: nn.Module | None) -> dict[str, float]:
    """One optimisation step of the encoder through the frozen generator."""
    idx = torch.randint(0, data01.shape[0], (cfg.batch,), generator=gen).to(data01.device)
    real = random_xflip(data01[idx], cfg.xflip, gen)
    codes = progressive_codes(encoder, real, stage_at(cfg, step, generator.num_ws))
    rec = (generator.synthesis(codes) + 1.0) * 0.5
    loss, parts = reconstruction_loss(rec, real, cfg.l2, cfg.l1, cfg.ssim)
    out = {"rec_loss": float(loss.detach()), "ssim": parts["ssim"], "mse": parts["mse"]}
    if cfg.delta_weight > 0:
        dn = delta_norm(codes - encoder.latent_avg.unsqueeze(0))
        loss = loss + cfg.delta_weight * dn
        out["delta_norm"] = float(dn.detach())
    if reid is not None and cfg.id_weight > 0:
        with torch.no_grad():
            f_real = reid(real)
        id_loss = (1.0 - (reid(rec.clamp(0, 1)) * f_real).sum(dim=1)).mean()
        loss = loss + cfg.id_weight * id_loss
        out["id_loss"] = float(id_loss.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    out["loss"] = float(loss.detach())
    return out


def _generator_digest(path: str | Path) -> str:
    p = Path(path)
    st, _ = own_format_paths(p)
    return file_digest(st if st.is_file() else p)


def train_encoder(
    cfg: EncoderTrainConfig, crops: CropSet, generator_path: str | Path, out_dir: str | Path,
    resume: bool | str | Path = False, progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) an encoder for the generator file ``generator_path`` on ``crops``.

    Outputs in ``out_dir``: ``encoder.pt`` (official E4E layout), ``reconstructions.png``,
    ``train_log.jsonl``, ``train_summary.json``, ``checkpoints/``. Returns the summary dict.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    deadline = Deadline(cfg.minutes)
    G = load_generator(generator_path, device=cfg.device)  # eval mode, frozen
    if crops.size != (G.img_height, G.img_width):
        raise ValueError(f"crops are {crops.size[0]}x{crops.size[1]}, the generator makes {G.img_height}x{G.img_width}")
    enc = build_encoder(cfg, G)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    reid = None
    if cfg.id_weight > 0:
        reid = load_reid(cfg.reid, device=cfg.device, input_size=tuple(cfg.reid_size)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    g_digest = _generator_digest(generator_path)
    fingerprint = crops.fingerprint()
    step, prior_elapsed = 0, 0.0
    history: list[dict[str, Any]] = []
    ckpt_path = resolve_resume(out, resume)
    if ckpt_path is not None:
        ckpt = ck.load_checkpoint(ckpt_path, KIND, ("config", "E", "opt", "rng", "generator_digest"))
        diff = identity_mismatch(ckpt["config"], config_dict(cfg))
        if diff:
            raise ValueError(f"{ckpt_path}: cannot resume with different settings ({'; '.join(diff)})")
        if ckpt["generator_digest"] != g_digest:
            raise ValueError(f"{ckpt_path}: trained for another generator file than {generator_path}")
        if ckpt.get("data_fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path}: the training data differ from the checkpoint's")
        ck.load_state(enc, ckpt["E"], "E", ckpt_path)
        ck.load_state(opt, ckpt["opt"], "opt", ckpt_path)
        ck.restore_rng(ckpt["rng"], gen, ckpt_path)
        step, prior_elapsed = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        history = list(ckpt.get("history", []))
        LOG.info("resumed %s at step %d", ckpt_path, step)

    def state() -> dict[str, Any]:
        return {"config": config_dict(cfg), "generator_digest": g_digest, "data_fingerprint": fingerprint,
                "elapsed_s": prior_elapsed + deadline.elapsed(), "history": list(history),
                "rng": ck.capture_rng(gen), "E": enc.state_dict(), "opt": opt.state_dict()}

    data01 = crops.as_float().to(cfg.device)
    meter = LossMeter()
    stopped = "steps"
    last_saved = step if ckpt_path is not None else -1
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="train E", unit="step", disable=not progress or None,
               dynamic_ncols=True)
    t_last = time.monotonic()
    try:
        while step < cfg.steps:
            if deadline.expired():
                stopped = "time"
                break
            losses = encoder_step(enc, G, opt, cfg, data01, step, gen, reid)
            step += 1
            meter.add(losses, step)
            if on_step is not None:
                on_step(step, losses)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.monotonic()
                entry = {"step": step, "stage": stage_at(cfg, step - 1, G.num_ws),
                         "sec_per_step": (now - t_last) / max(1, meter.count),
                         **{k: round(v, 6) for k, v in meter.flush().items()}}
                t_last = now
                history.append(entry)
                bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k in ("loss", "ssim")})
                write_history(out / "train_log.jsonl", history)
            if step % cfg.checkpoint_every == 0:
                ck.save_checkpoint(out, KIND, step, state())
                last_saved = step
    finally:
        bar.close()
    if last_saved != step:
        ck.save_checkpoint(out, KIND, step, state())
    if stage_at(cfg, max(step - 1, 0), G.num_ws) < G.num_ws - 1:
        LOG.warning("training stopped before every W+ delta was unlocked (stage %d of %d): the saved "
                    "encoder's later deltas are untrained", stage_at(cfg, max(step - 1, 0), G.num_ws), G.num_ws - 1)
    files = _save_outputs(enc, G, out, crops, step, g_digest, generator_path)
    total = prior_elapsed + deadline.elapsed()
    summary = {"kind": KIND, "step": step, "stopped": stopped, "elapsed_s_this_run": round(deadline.elapsed(), 1),
               "elapsed_s_total": round(total, 1), "config": config_dict(cfg), "generator": str(generator_path),
               "generator_digest": g_digest, "data": {**crops.meta, "crops": len(crops), "fingerprint": fingerprint},
               "hardware": hardware(), "files": files, "last_losses": history[-1] if history else {}}
    write_json(out / "train_summary.json", summary)
    return summary


def _save_outputs(enc: nn.Module, G: nn.Module, out: Path, crops: CropSet, step: int, g_digest: str,
                  generator_path: str | Path) -> dict[str, str]:
    enc.eval()
    path = out / "encoder.pt"
    extra = {"trained_steps": int(step), "generator_digest": g_digest,
             "generator_file": Path(generator_path).name, "trainer": "latent-rag train encoder"}
    atomic_write(path, lambda tmp: save_e4e(enc, tmp, extra))
    real = crops.as_float()[: min(8, len(crops))]
    rec = encode_regenerate(G, enc, real)
    png = save_png(out / "reconstructions.png", image_grid([real, rec]))
    return {"encoder": str(path), "reconstructions": str(png)}
