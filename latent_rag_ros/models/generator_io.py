"""Generator files: the project's own format, NVlabs snapshot import, conversion, construction.

Own format: ``NAME.safetensors`` (the state dict, official tensor names) + ``NAME.json`` (family,
all constructor kwargs, format version). It loads without any pickle. ``convert_snapshot`` turns an
NVlabs ``.pkl`` (read by the restricted unpickler in :mod:`latent_rag_ros.models.nvlabs_pickle`)
into that format; ``build_generator`` constructs a random-weight network of either family.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latent_rag_ros.fileio import atomic_write, sha256_file
from latent_rag_ros.models import nvlabs_pickle
from latent_rag_ros.models.safe_load import ModelFileError, load_json, load_safetensors, require_file
from latent_rag_ros.models.stylegan.stylegan2 import Generator as StyleGAN2Generator
from latent_rag_ros.models.stylegan.stylegan3 import Generator as StyleGAN3Generator

FORMAT_NAME = "latent_rag_ros.generator"
FORMAT_VERSION = 1
FAMILIES: dict[str, type[nn.Module]] = {"stylegan3": StyleGAN3Generator, "stylegan2": StyleGAN2Generator}
EXPECTED_OWN = "a latent_rag_ros generator (NAME.safetensors + NAME.json)"
EXPECTED_ANY = "a generator file: NVlabs StyleGAN2/StyleGAN3 .pkl, or NAME.safetensors + NAME.json"

_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_POSITIONAL_HUMAN = ("z_dim", "c_dim", "w_dim", "img_resolution", "square", "img_channels")


def normalize_init_kwargs(
    family: str,
    init_kwargs: dict[str, Any],
    init_args: tuple[Any, ...] | list[Any] = (),
    square_positional: bool = False,
) -> dict[str, Any]:
    """Turn recorded NVlabs constructor arguments into this package's ``Generator`` kwargs.

    Handles positional args, ``class_name``, StyleGAN2-ADA's nested ``synthesis_kwargs`` (whose
    defaults differ: no conv clamp, no fp16 layers, ``w_avg_beta=0.995``) and StyleGAN-Human's
    ``square`` argument.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r} (known: {sorted(FAMILIES)})")
    kwargs = nvlabs_pickle.to_plain(dict(init_kwargs))
    names = _POSITIONAL_HUMAN if square_positional else _POSITIONAL
    if len(init_args) > len(names):
        raise ValueError(f"too many positional constructor arguments ({len(init_args)})")
    for name, value in zip(names, nvlabs_pickle.to_plain(list(init_args))):
        kwargs[name] = value
    kwargs.pop("class_name", None)
    kwargs["mapping_kwargs"] = dict(kwargs.get("mapping_kwargs") or {})
    nested = kwargs.pop("synthesis_kwargs", None)
    if nested is not None:  # stylegan2-ada-pytorch layout: Generator(..., synthesis_kwargs={...})
        if not isinstance(nested, dict):
            raise ValueError("synthesis_kwargs is not a dict")
        for key, value in nested.items():
            kwargs.setdefault(key, value)
        if family == "stylegan2":
            kwargs.setdefault("conv_clamp", None)
            kwargs.setdefault("num_fp16_res", 0)
            kwargs.setdefault("fused_modconv_default", "inference_only")
            kwargs["mapping_kwargs"].setdefault("w_avg_beta", 0.995)
    missing = [k for k in _POSITIONAL if k not in kwargs]
    if missing:
        raise ValueError(f"constructor arguments lack {missing}")
    return kwargs


def build_generator(family: str, init_kwargs: dict[str, Any]) -> nn.Module:
    """Construct a random-weight generator of ``family`` ('stylegan3' or 'stylegan2').

    ``init_kwargs`` are the official constructor kwargs (``z_dim, c_dim, w_dim, img_resolution,
    img_channels, mapping_kwargs`` and synthesis kwargs such as ``channel_base``, ``square``).
    Uses the global torch RNG, so seed it for reproducible weights.
    """
    cls = FAMILIES.get(family)
    if cls is None:
        raise ValueError(f"unknown generator family {family!r} (known: {sorted(FAMILIES)})")
    kwargs = dict(init_kwargs)
    return cls(**kwargs)


def _build_for_loading(family: str, kwargs: dict[str, Any], path: Path, expected: str) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):  # loading must not disturb the caller's RNG stream
            torch.manual_seed(0)
            return build_generator(family, kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, ZeroDivisionError) as exc:
        raise ModelFileError(path, expected, f"unsupported {family} architecture options ({exc})") from None


def copy_tensors_strict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, expected: str) -> None:
    """Copy every tensor into ``model``'s state; all names and shapes must match exactly."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    mismatched = [f"{k} {tuple(tensors[k].shape)} != {tuple(own[k].shape)}"
                  for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label}: {', '.join(items[:8])}{more}")
        raise ModelFileError(path, expected, "weights do not fit the architecture; " + "; ".join(parts))
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelFileError(path, expected, f"weights contain NaN/Inf: {', '.join(bad[:8])}")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(tensors[k].to(device=t.device, dtype=t.dtype))


def _finish(model: nn.Module, device: str | torch.device) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device)


def generator_family(model: nn.Module) -> str:
    """'stylegan3' or 'stylegan2' for a generator of this package."""
    for name, cls in FAMILIES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"{type(model).__name__} is not a generator of this package")


def generator_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON architecture record of a generator (family, config, init kwargs, shapes)."""
    family = generator_family(model)
    config = model.config_name
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": config,
        "init_kwargs": nvlabs_pickle.to_plain(model.init_kwargs),
        "z_dim": model.z_dim,
        "c_dim": model.c_dim,
        "w_dim": model.w_dim,
        "num_ws": model.num_ws,
        "img_resolution": model.img_resolution,
        "img_channels": model.img_channels,
        "img_height": model.img_height,
        "img_width": model.img_width,
        "square": model.square,
    }


def own_format_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_generator(
    model: nn.Module, out_path: str | os.PathLike, source: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``model`` as ``OUT.safetensors`` + ``OUT.json``; returns both paths."""
    from safetensors.torch import save_file

    st_path, js_path = own_format_paths(out_path)
    spec = generator_spec(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    spec["num_tensors"] = len(tensors)
    spec["weights_file"] = st_path.name
    if source:
        spec["source"] = source
    atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT_NAME,
                                                                         "family": spec["family"]}))
    spec["weights_sha256"] = sha256_file(st_path)
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    atomic_write(js_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return st_path, js_path


def load_own_format(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load ``NAME.safetensors`` + ``NAME.json`` written by :func:`save_generator` (no pickle)."""
    st_path, js_path = own_format_paths(path)
    spec = load_json(js_path, EXPECTED_OWN)
    if spec.get("format") != FORMAT_NAME:
        raise ModelFileError(js_path, EXPECTED_OWN, f"not a generator description (format={spec.get('format')!r})")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(js_path, EXPECTED_OWN, f"unsupported format_version {spec.get('format_version')!r} "
                             f"(this version reads {FORMAT_VERSION})")
    family = spec.get("family")
    kwargs = spec.get("init_kwargs")
    if family not in FAMILIES or not isinstance(kwargs, dict):
        raise ModelFileError(js_path, EXPECTED_OWN, f"bad family {family!r} or init_kwargs")
    model = _build_for_loading(family, kwargs, js_path, EXPECTED_OWN)
    for key in ("num_ws", "w_dim", "img_height", "img_width"):
        if key in spec and spec[key] != getattr(model, key):
            raise ModelFileError(js_path, EXPECTED_OWN, f"{key}={spec[key]} disagrees with init_kwargs "
                                 f"({getattr(model, key)})")
    tensors = load_safetensors(require_file(st_path, EXPECTED_OWN), EXPECTED_OWN)
    copy_tensors_strict(model, tensors, st_path, EXPECTED_OWN)
    return _finish(model, device)


def load_nvlabs_generator(
    path: str | os.PathLike, device: str | torch.device = "cpu", key: str = "G_ema"
) -> nn.Module:
    """Rebuild ``G_ema`` (or ``key``) of an NVlabs snapshot without running any code from the file."""
    p = Path(path).expanduser()
    snapshot = nvlabs_pickle.load_snapshot(p)
    record = nvlabs_pickle.snapshot_network(snapshot, p, key)
    family = nvlabs_pickle.detect_family(record, p)
    args = record.init_args  # StyleGAN-Human: Generator(z_dim, c_dim, w_dim, img_resolution, square, ...)
    square_positional = len(args) >= 5 and isinstance(args[4], (bool, np.bool_))
    try:
        kwargs = normalize_init_kwargs(family, record.init_kwargs, record.init_args, square_positional)
    except ValueError as exc:
        raise ModelFileError(p, nvlabs_pickle.EXPECTED, f"cannot read the generator's constructor arguments "
                             f"({exc})") from None
    model = _build_for_loading(family, kwargs, p, nvlabs_pickle.EXPECTED)
    copy_tensors_strict(model, nvlabs_pickle.record_tensors(record, p), p, nvlabs_pickle.EXPECTED)
    model.source_module = record.module_name_guess
    return _finish(model, device)


def load_generator_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Detect the file kind (own format or NVlabs pickle) and load the generator."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".safetensors", ".json"):
        return load_own_format(p, device)
    if not p.exists():
        st_path, js_path = own_format_paths(p)
        if st_path.exists() or js_path.exists():
            return load_own_format(p, device)
        require_file(p, EXPECTED_ANY)
    return load_nvlabs_generator(p, device)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a generator from an NVlabs pickle (StyleGAN3 T/R, StyleGAN2/ADA) or the own format.

    NVlabs pickles go through the restricted unpickler (no code in the file is ever run; the
    ``G_ema`` network is rebuilt from its recorded init kwargs). The own format is
    ``NAME.safetensors`` + ``NAME.json`` (either path, or ``NAME``). The result is in eval mode
    with ``requires_grad`` off. Raises ModelFileError for missing, corrupt, wrong-kind or unsafe files.
    """
    return load_generator_file(path, device=device)


def convert_snapshot(src_pkl: str | os.PathLike, out_path: str | os.PathLike) -> tuple[Path, Path]:
    """Convert an NVlabs snapshot's ``G_ema`` to ``OUT.safetensors`` + ``OUT.json``."""
    src = Path(src_pkl).expanduser()
    model = load_nvlabs_generator(src, "cpu")
    source = {"kind": "nvlabs_pickle", "file": src.name, "sha256": sha256_file(src), "network": "G_ema",
              "module": getattr(model, "source_module", "unknown")}
    return save_generator(model, out_path, source=source)


__all__ = [
    "EXPECTED_ANY",
    "EXPECTED_OWN",
    "FAMILIES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "build_generator",
    "convert_snapshot",
    "copy_tensors_strict",
    "generator_spec",
    "load_generator",
    "load_generator_file",
    "load_nvlabs_generator",
    "load_own_format",
    "normalize_init_kwargs",
    "own_format_paths",
    "save_generator",
]
