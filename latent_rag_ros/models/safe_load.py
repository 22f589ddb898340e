"""Safe reading of user model files: one place, one error type, never code execution.

Every loader in ``latent_rag_ros.models`` reads files through these helpers so that a missing,
truncated, wrong-kind or malicious file always gives the same kind of clear error.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable, corrupt, of the wrong kind, or unsafe."""

    def __init__(self, path: str | os.PathLike, expected: str, reason: str) -> None:
        self.path = str(path)
        self.expected = expected
        self.reason = reason
        super().__init__(f"{self.path}: {reason} (expected {expected})")


def require_file(path: str | os.PathLike, expected: str) -> Path:
    """Return ``path`` as a Path if it is a readable, non-empty file, else raise ModelFileError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(p, expected, "file not found (no weights are downloaded at run time)")
    if not p.is_file():
        raise ModelFileError(p, expected, "not a regular file")
    if p.stat().st_size == 0:
        raise ModelFileError(p, expected, "file is empty")
    return p


def torch_load(path: str | os.PathLike, expected: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, no code.

    A pickle that would run code (or build any object outside torch's allow-list) is refused
    with a ModelFileError instead of being executed.
    """
    p = require_file(path, expected)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except (*pickle_errors(), RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        detail = _unpickler_detail(str(exc)) or type(exc).__name__
        if "Unsupported global" in detail:
            reason = f"refused: the file asks to build objects outside the safe allow-list ({detail})"
        else:
            reason = f"not a readable torch checkpoint: corrupt, truncated or another kind of file ({detail})"
        raise ModelFileError(p, expected, reason) from None


def _unpickler_detail(text: str) -> str:
    """The informative part of torch's weights-only error (not its advice to disable the guard)."""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def pickle_errors() -> tuple[type[BaseException], ...]:
    """Exception types raised by the unpicklers for malformed or refused data."""
    return (pickle.UnpicklingError, AttributeError, ImportError, KeyError, IndexError, TypeError)


def load_safetensors(path: str | os.PathLike, expected: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into a dict of tensors, with a clear error when corrupt."""
    p = require_file(path, expected)
    try:
        return load_file(str(p), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(p, expected, f"corrupt or truncated safetensors file ({exc})") from None


def load_json(path: str | os.PathLike, expected: str) -> dict[str, Any]:
    """Read a JSON object with a clear error when missing or malformed."""
    p = require_file(path, expected)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(p, expected, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(p, expected, "JSON top level is not an object")
    return data


def extract_state_dict(obj: Any, path: str | os.PathLike, expected: str) -> dict[str, torch.Tensor]:
    """Find the tensor dict in a checkpoint (``state_dict``/``model``/bare) and strip ``module.``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(path, expected, "no state dict of tensors found in the checkpoint")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out
