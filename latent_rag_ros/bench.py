"""``latent-rag bench protect``: per-stage latency of the Protector for a few batch sizes.

Uses the configured models (random weights when the demo weights are missing: timings do not depend
on the weights) and a throw-away store in memory-mapped temporary files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import numpy as np
import torch


def bench_protect(args: argparse.Namespace) -> int:
    """Print mean per-stage milliseconds per batch for each batch size (JSON lines)."""
    from latent_rag_ros.cli import config_from_args
    from latent_rag_ros.core.protector import Protector, resolve_device
    from latent_rag_ros.models.factory import build_models
    from latent_rag_ros.store import open_store

    cfg = config_from_args(args)
    device = resolve_device(cfg.protector.device)
    models = build_models(cfg, device, with_encoder=False)
    g, reid = models.generator, models.reid
    prot = Protector(g, reid, cfg.protector, device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"{tmp}/store", create=True, dim=reid.dim, num_ws=g.num_ws, w_dim=g.w_dim)
        n = max(64, cfg.protector.m * 4)
        with torch.no_grad():
            ws = g.mapping(torch.randn(n, g.z_dim, device=device)).cpu().numpy()
        store.add(rng.normal(size=(n, reid.dim)).astype(np.float32), ws)
        print(json.dumps({"device": str(device), "generator": models.sources["generator"],
                          "reid": models.sources["reid"], "m": cfg.protector.m, "T": cfg.protector.steps}))
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            images = torch.rand(bs, 3, *prot.working_size, device=device)
            prot.protect_with_store(images, store)  # warm-up
            runs = [prot.protect_with_store(images, store).timings_ms for _ in range(args.repeats)]
            mean = {k: round(statistics.mean(r[k] for r in runs), 2) for k in runs[0]}
            mean["per_crop_total"] = round(mean["total"] / bs, 2)
            print(json.dumps({"batch": bs, "ms": mean}))
        store.close()
    return 0
