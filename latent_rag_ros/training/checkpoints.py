"""Resumable training checkpoints: atomic writes, safe loading, RNG state capture.

A checkpoint is ``DIR/checkpoints/ckpt_NNNNNNNN.pt``: a dict of tensors and plain values (network
and optimizer state dicts, step, config, RNG states) written with ``torch.save`` to a temporary file
in the same folder, fsync'ed and renamed over the final name, so a crash never leaves a half-written
checkpoint under that name. Reading goes through :func:`latent_rag_ros.models.safe_load.torch_load`
(``weights_only=True``: nothing in the file is executed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from latent_rag_ros.fileio import atomic_write
from latent_rag_ros.models.safe_load import ModelFileError, torch_load

FORMAT = "latent_rag_ros.train_checkpoint"
VERSION = 1
EXPECTED = "a latent_rag_ros training checkpoint (checkpoints/ckpt_NNNNNNNN.pt written by `latent-rag train`)"
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    """Where a training run keeps its checkpoints."""
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint of a run, oldest first."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_checkpoint(out_dir: str | os.PathLike, kind: str, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` (atomically) and delete all but the newest ``keep``."""
    obj = {"format": FORMAT, "version": VERSION, "kind": kind, "step": int(step), **state}
    path = atomic_torch_save(obj, checkpoint_dir(out_dir) / f"ckpt_{int(step):08d}.pt")
    for _, old in list_checkpoints(out_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """Read and validate a checkpoint of ``kind``; ModelFileError naming the file if it is not one."""
    obj = torch_load(path, EXPECTED)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelFileError(path, EXPECTED, "not a training checkpoint of this package")
    if obj.get("version") != VERSION:
        raise ModelFileError(path, EXPECTED, f"unsupported checkpoint version {obj.get('version')!r} "
                             f"(this version reads {VERSION})")
    if obj.get("kind") != kind:
        raise ModelFileError(path, EXPECTED, f"checkpoint of a {obj.get('kind')!r} run, not {kind!r}")
    missing = [k for k in ("step", *required) if k not in obj]
    if missing:
        raise ModelFileError(path, EXPECTED, f"checkpoint lacks {', '.join(missing)}")
    return obj


def capture_rng(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The trainer's generator state and torch's global CPU RNG state."""
    return {"trainer": gen.get_state(), "torch_cpu": torch.get_rng_state()}


def restore_rng(state: dict[str, Any], gen: torch.Generator, path: str | os.PathLike) -> None:
    """Restore what :func:`capture_rng` captured (ModelFileError if malformed)."""
    try:
        gen.set_state(state["trainer"])
        torch.set_rng_state(state["torch_cpu"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelFileError(path, EXPECTED, f"bad RNG state ({exc})") from None


def load_state(target: torch.nn.Module | torch.optim.Optimizer, state: Any, name: str,
               path: str | os.PathLike) -> None:
    """``target.load_state_dict(state)`` (strict for modules) with a ModelFileError when it does not fit."""
    if not isinstance(state, dict):
        raise ModelFileError(path, EXPECTED, f"{name}: no state dict")
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(path, EXPECTED, f"{name} does not fit this architecture ({first})") from None
