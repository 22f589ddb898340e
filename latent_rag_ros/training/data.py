"""Training images: person crops from a video (the project's detector), a bag, a folder or a crops file.

Crops are resized once to the generator's ``H x W`` and kept as uint8 RGB ``[N, 3, H, W]`` (a
:class:`CropSet`), so a run and its resumption see bit-identical data. A ``.npz`` crops file (what
:func:`save_crops` writes, read back with ``allow_pickle=False``) caches the detector's work.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_rag_ros.config import load_config
from latent_rag_ros.core.imaging import bgr_to_tensor
from latent_rag_ros.datasets import DatasetError, needs_detector, open_source, read_video_frames, source_kind
from latent_rag_ros.fileio import atomic_write
from latent_rag_ros.models.factory import build_detector
from latent_rag_ros.people import crop_people

CROPS_FORMAT = "latent_rag_ros.crops"
CROPS_EXPECTED = "a crops file (.npz with uint8 'images' [N,H,W,3] RGB, 'names' and 'meta')"


@dataclass
class CropSet:
    """Person crops as uint8 RGB ``[N, 3, H, W]`` with their names and a description of the source."""

    images: torch.Tensor
    names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every crop."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def fingerprint(self) -> str:
        """Short sha256 of the pixels (ties a checkpoint to its data)."""
        return hashlib.sha256(self.images.contiguous().numpy().tobytes()).hexdigest()[:16]

    def as_float(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.images.to(torch.float32) / 255.0


def parse_frames(spec: str | None) -> tuple[int, int | None] | None:
    """``"0:480"`` -> (0, 480), ``"500:"`` -> (500, None); None or '' -> None (all frames)."""
    if spec is None or not str(spec).strip():
        return None
    text = str(spec).strip()
    if ":" not in text:
        raise ValueError(f"frame range {spec!r}: expected START:STOP (STOP exclusive, may be empty)")
    a, b = text.split(":", 1)
    start = int(a) if a.strip() else 0
    stop = int(b) if b.strip() else None
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"frame range {spec!r}: need 0 <= START < STOP")
    return start, stop


def _in_range(index: int | None, frames: tuple[int, int | None] | None, step: int) -> bool:
    if frames is None or index is None:
        return True
    start, stop = frames
    return index >= start and (stop is None or index < stop) and (index - start) % max(1, step) == 0


def _to_uint8(bgr_crops: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    if not bgr_crops:
        return torch.zeros((0, 3, *size), dtype=torch.uint8)
    out = []
    for s in range(0, len(bgr_crops), 256):
        x = bgr_to_tensor(bgr_crops[s: s + 256], size)
        out.append((x * 255.0).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def collect_crops(
    src: str | os.PathLike, size: tuple[int, int], frames: str | None = None, frame_step: int = 1,
    config: Any = None, split: str | None = None, limit: int = 0,
) -> CropSet:
    """Read person crops from ``src`` and resize them to ``size`` = (H, W).

    Videos and bags are cut with the configured person detector (``config.detector``; the default
    config when None) and :func:`latent_rag_ros.people.crop_people`; ``frames`` ("START:STOP") and
    ``frame_step`` select frames. Folders and dataset layouts are read as they are (``split``).
    """
    p = Path(src).expanduser()
    if p.suffix.lower() == ".npz":
        return load_crops(p)
    rng = parse_frames(frames)
    kind = source_kind(p)
    crops: list[np.ndarray] = []
    names: list[str] = []
    if needs_detector(p):
        cfg = config if config is not None else load_config(None)
        detector = build_detector(cfg)
        stop = None if rng is None else rng[1]
        if kind == "video":
            for index, frame in read_video_frames(p, max_frames=stop):
                if not _in_range(index, rng, frame_step):
                    continue
                for j, person in enumerate(crop_people(detector, frame, cfg.detector)):
                    crops.append(person.crop)
                    names.append(f"{p.name}#f{index:06d}_b{j}")
                if limit and len(crops) >= limit:
                    break
        else:
            for smp in open_source(p, detector=detector, max_frames=stop, pad=cfg.detector.pad,
                                   min_score=cfg.detector.min_score):
                if _in_range(smp.frame, rng, frame_step) and min(smp.image.shape[:2]) >= 2:
                    crops.append(smp.image)
                    names.append(smp.name)
                if limit and len(crops) >= limit:
                    break
        detector_desc = {"kind": cfg.detector.kind, "min_score": cfg.detector.min_score,
                         "upscale": cfg.detector.upscale, "min_height": cfg.detector.min_height,
                         "max_crops": cfg.detector.max_crops, "pad": cfg.detector.pad}
    else:
        for smp in open_source(p, split=split):
            crops.append(smp.image)
            names.append(smp.name)
            if limit and len(crops) >= limit:
                break
        detector_desc = None
    if limit:
        crops, names = crops[:limit], names[:limit]
    if not crops:
        raise DatasetError(f"{p}: no person crops found (frames={frames or 'all'})")
    meta = {"source": str(p.resolve()), "kind": kind, "frames": frames or "", "frame_step": int(frame_step),
            "split": split or "", "size": list(size), "count": len(crops), "detector": detector_desc}
    return CropSet(_to_uint8(crops, size), names, meta)


def save_crops(crops: CropSet, path: str | os.PathLike) -> Path:
    """Write a crops file (``.npz``, no pickled objects) atomically."""
    images = crops.images.permute(0, 2, 3, 1).contiguous().numpy()
    meta = json.dumps({"format": CROPS_FORMAT, **crops.meta})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, names=np.array(crops.names, dtype=np.str_), meta=np.array(meta))

    return atomic_write(path, write)


def load_crops(path: str | os.PathLike) -> CropSet:
    """Read a crops file written by :func:`save_crops` (DatasetError naming the file if it is not one)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{p}: file not found (expected {CROPS_EXPECTED})")
    try:
        with np.load(p, allow_pickle=False) as z:
            images, names, meta_text = z["images"], z["names"], str(z["meta"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{p}: not readable as {CROPS_EXPECTED} ({exc})") from None
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != CROPS_FORMAT or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DatasetError(f"{p}: not {CROPS_EXPECTED} (got {images.dtype} {images.shape})")
    if len(names) != images.shape[0]:
        raise DatasetError(f"{p}: {len(names)} names for {images.shape[0]} images")
    meta.pop("format", None)
    return CropSet(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(),
                   [str(n) for n in names], meta)


def cached_crops(src: str | os.PathLike, size: tuple[int, int], cache: str | os.PathLike | None,
                 **options: Any) -> CropSet:
    """:func:`collect_crops`, reusing ``cache`` when it was made from the same request (else rewriting it)."""
    p = Path(src).expanduser()
    if p.suffix.lower() == ".npz":
        crops = load_crops(p)
        if crops.size != tuple(size):
            raise DatasetError(f"{p}: crops are {crops.size[0]}x{crops.size[1]}, the model needs "
                               f"{size[0]}x{size[1]}")
        return crops
    request = {"source": str(p.resolve()), "size": list(size), "frames": options.get("frames") or "",
               "frame_step": int(options.get("frame_step", 1)), "split": options.get("split") or "",
               "mtime": p.stat().st_mtime if p.exists() else None}
    if cache is not None and Path(cache).is_file():
        try:
            crops = load_crops(cache)
            if crops.meta.get("request") == request:
                return crops
        except DatasetError:
            pass
    crops = collect_crops(p, size, **options)
    crops.meta["request"] = request
    if cache is not None:
        save_crops(crops, cache)
    return crops
