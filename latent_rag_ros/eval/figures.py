"""Figures of an evaluation run with matplotlib (Agg, no display): the Fig. 6 grid and Fig. 7 sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib  # lazy: matplotlib is heavy and only needed when figures are written

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def comparison_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], out: str | Path,
                    max_columns: int = 6, cell_height: float = 1.6) -> Path:
    """Save a grid like the paper's Fig. 6: one row per (title, BGR crops), one column per query."""
    if not rows:
        raise ValueError("no rows to draw")
    plt = _plt()
    ncol = min(max_columns, min(len(imgs) for _, imgs in rows))
    if ncol < 1:
        raise ValueError("every row needs at least one image")
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * cell_height * 0.6 + 1.6, len(rows) * cell_height),
                             squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.imshow(np.ascontiguousarray(imgs[c][:, :, ::-1]))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    p = Path(out)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def sweep_plot(name: str, rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Save SSIM (left axis) and mAP (right axis) against a swept parameter, like the paper's Fig. 7."""
    if not rows:
        raise ValueError(f"no sweep values for {name}")
    plt = _plt()
    xs = [r["value"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot(xs, [r["ssim_mean"] for r in rows], "o-", color="tab:blue", label="SSIM")
    ax.set_xlabel(name)
    ax.set_ylabel("SSIM (protected vs original)", color="tab:blue")
    maps = [r.get("mAP") for r in rows]
    if all(m is not None for m in maps):
        ax2 = ax.twinx()
        ax2.plot(xs, [100 * m for m in maps], "s--", color="tab:red", label="mAP")
        ax2.set_ylabel("mAP (%)", color="tab:red")
    ax.set_title(f"Effect of {name}")
    fig.tight_layout()
    p = Path(out)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
