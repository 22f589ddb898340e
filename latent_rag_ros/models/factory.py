"""Build the models a Config names: generator, latent encoder, re-ID encoder, detector.

``demo`` resolves to the small models shipped in ``latent_rag_ros/data/demo`` (random weights, with
a loud warning, while they are missing); ``random`` builds small random-weight networks for tests
and smoke runs. Everything else is a user file loaded by the safe loaders of this package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latent_rag_ros.config import Config
from latent_rag_ros.fileio import file_digest
from latent_rag_ros.models import generator_io
from latent_rag_ros.models.detectors import detector_from_config
from latent_rag_ros.models.e4e import build_e4e, load_e4e
from latent_rag_ros.models.generator_io import load_generator
from latent_rag_ros.models.projection import ProjectionEncoder
from latent_rag_ros.models.reid import load_reid

LOG = logging.getLogger(__name__)
DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"


@dataclass
class Models:
    """The model set one protector (or one evaluation) runs with, and where each came from."""

    generator: torch.nn.Module
    reid: torch.nn.Module
    latent_encoder: torch.nn.Module | None
    detector: Any | None
    sources: dict[str, str]
    random_weights: list[str]


def random_generator_kwargs(cfg: Config) -> dict[str, Any]:
    """Architecture of the small random StyleGAN3-T (rectangular H x H/2, like StyleGAN-Human)."""
    r = cfg.models.random_resolution
    return {
        "z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": r, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "channel_base": cfg.models.random_channels * r, "channel_max": cfg.models.random_channels,
        "num_layers": 6, "num_critical": 2, "margin_size": 4, "square": False,
    }


def _demo_file(name: str) -> Path | None:
    p = DEMO_DIR / name
    return p if p.is_file() else None


def build_generator(cfg: Config, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str, bool]:
    """Generator named by ``cfg.models.generator``; returns (module, source description, random?)."""
    spec = cfg.models.generator
    if spec == "demo":
        demo = _demo_file("generator.safetensors")
        if demo is not None:
            return load_generator(demo, device=device), f"demo:generator#{file_digest(demo)}", False
        LOG.warning("demo generator weights are not installed: using a RANDOM-WEIGHT generator")
        spec = "random"
    if spec == "random":
        torch.manual_seed(cfg.models.random_seed)
        g = generator_io.build_generator("stylegan3", random_generator_kwargs(cfg)).to(device).eval()
        res = cfg.models.random_resolution
        return g, f"random:stylegan3-t-{res}x{res // 2}-seed{cfg.models.random_seed}", True
    path = cfg.resolve_path(spec)
    return load_generator(path, device=device), f"{path}#{file_digest(path)}", False


def build_reid(
    cfg: Config, device: str | torch.device = "cpu", kind: str | None = None, path: str | None = None
) -> torch.nn.Module:
    """Re-ID encoder of ``cfg.models.reid`` (or ``kind``/``path`` for extra backbones)."""
    kind = kind or cfg.models.reid
    path = path if path is not None else cfg.models.reid_path
    size = (cfg.models.reid_input_height, cfg.models.reid_input_width)
    return load_reid(kind, cfg.resolve_path(path) if path else None, device=device, input_size=size).eval()


def reid_fingerprint(cfg: Config) -> str:
    """``kind:builtin`` or ``kind:path#digest``: what a store records as its re-ID model."""
    if not cfg.models.reid_path:
        return f"{cfg.models.reid}:builtin"
    path = cfg.resolve_path(cfg.models.reid_path)
    return f"{cfg.models.reid}:{path}#{file_digest(path)}"


def build_latent_encoder(
    cfg: Config, generator: torch.nn.Module, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, str, bool]:
    """W+ encoder of ``cfg.models.latent_encoder`` for ``generator``; returns (module, source, random?)."""
    spec = cfg.models.latent_encoder
    size = (int(generator.img_height), int(generator.img_width))
    if spec == "demo":
        demo = _demo_file("encoder.pt")
        if demo is not None:
            return load_e4e(demo, num_ws=generator.num_ws, device=device), f"demo:encoder#{file_digest(demo)}", False
        LOG.warning("demo encoder weights are not installed: using a RANDOM-WEIGHT latent encoder")
        spec = "random"
    if spec == "random":
        torch.manual_seed(cfg.models.random_seed + 1)
        # a narrow 4-unit IR-SE encoder starting from the generator's average latent, as E4E does
        enc = build_e4e(num_ws=generator.num_ws, input_size=size, width_mult=0.25, num_layers=(1, 1, 1, 1),
                        w_dim=generator.w_dim, latent_avg=generator.w_avg.detach().cpu())
        return enc.to(device).eval(), "random:e4e-small", True
    if spec == "projection":
        return ProjectionEncoder(generator, steps=cfg.models.projection_steps), "projection", False

    path = cfg.resolve_path(spec)
    return load_e4e(path, num_ws=generator.num_ws, device=device), f"{path}#{file_digest(path)}", False


def build_detector(cfg: Config) -> Any:
    """Person detector of ``cfg.detector``."""
    d = cfg.detector
    return detector_from_config(d, cfg.resolve_path(d.path) if d.path else None)


def build_models(
    cfg: Config, device: str | torch.device = "cpu", with_encoder: bool = True, with_detector: bool = False
) -> Models:
    """Every model the config names, with a record of their sources and which are random."""
    gen, gsrc, grand = build_generator(cfg, device)
    reid = build_reid(cfg, device)
    sources = {"generator": gsrc, "reid": reid_fingerprint(cfg)}
    random_weights = ["generator"] if grand else []
    enc = None
    if with_encoder:
        enc, esrc, erand = build_latent_encoder(cfg, gen, device)
        sources["latent_encoder"] = esrc
        if erand:
            random_weights.append("latent_encoder")
    det = build_detector(cfg) if with_detector else None
    if det is not None:
        sources["detector"] = cfg.detector.kind
    return Models(gen, reid, enc, det, sources, random_weights)


def model_fingerprint(models: Models) -> dict[str, str]:
    """The model fingerprint a store built with these models records (its ``built_with``).

    Vocabulary (docs/design.md): *identity* is the re-ID vector f of a person; a *fingerprint* names
    the model weights (``source#sha256-prefix``) a store or index was built with.
    """
    return {k: v for k, v in models.sources.items() if k in ("generator", "latent_encoder", "reid")}
