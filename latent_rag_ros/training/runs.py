"""Bookkeeping shared by the trainers: configs, resume checks, loss history, time budget, hardware notes."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from latent_rag_ros.fileio import atomic_write

RUN_KEYS = frozenset({"steps", "minutes", "checkpoint_every", "log_every", "threads", "device"})
"""Config fields that may change when a run is resumed (they do not change what a step computes)."""


def config_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def identity_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields (other than :data:`RUN_KEYS`) whose values differ between two config dicts."""
    keys = (set(stored) | set(current)) - RUN_KEYS
    return sorted(f"{k}: checkpoint {stored.get(k)!r} != now {current.get(k)!r}"
                  for k in keys if stored.get(k) != current.get(k))


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch (0 keeps torch's default)."""
    if threads and threads > 0:
        torch.set_num_threads(int(threads))


def hardware() -> dict[str, Any]:
    """What ran the training (for the model card)."""
    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


class Deadline:
    """Wall-clock budget of one invocation (``minutes <= 0``: none)."""

    def __init__(self, minutes: float) -> None:
        self.start = time.monotonic()
        self.limit = float(minutes) * 60.0 if minutes and minutes > 0 else None

    def elapsed(self) -> float:
        """Seconds since the start of this invocation."""
        return time.monotonic() - self.start

    def expired(self) -> bool:
        """True once the budget is spent."""
        return self.limit is not None and self.elapsed() >= self.limit


class LossMeter:
    """Running sums of named losses between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float], step: int) -> None:
        """Accumulate one step's losses; RuntimeError if any is not finite (training diverged)."""
        for k, v in values.items():
            if not torch.isfinite(torch.tensor(v)):
                raise RuntimeError(f"training diverged at step {step}: loss {k} = {v}")
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def flush(self) -> dict[str, float]:
        """Means since the last flush (and reset)."""
        out = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the JSON-lines loss log atomically."""
    text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
