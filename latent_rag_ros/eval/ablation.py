"""Paper Table IV (ablations) and Table V (parameters, FLOPs and time per stage).

Table IV protects the same queries offline with the real Protector, once per variant:

* ``full``: Latent-RAG as configured;
* ``no_retrieval``: no store; the crop's own inversion E(I) is the only code (m = 1);
* ``no_inverse_attention``: plain mean of the retrieved codes (``protector.augment = False``);
* ``no_id_loss`` / ``no_div_loss``: eq. 6 without L_id / without L_div.

Every row is measured like every other method (the published image, ``embed_published``).
Table V counts FLOPs with ``torch.utils.flop_counter`` (matrix products and convolutions; a
backward pass counted in ``generate``), parameters per network, and times each stage on one crop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_rag_ros.core.augment import inverse_self_attention
from latent_rag_ros.core.generation import identity_aligned_generation, render
from latent_rag_ros.core.imaging import tensor_to_bgr
from latent_rag_ros.core.protector import Protector, merge_results
from latent_rag_ros.core.retrieval import Retrieved, retrieve

ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_retrieval": {},
    "no_inverse_attention": {"augment": False},
    "no_id_loss": {"use_id_loss": False},
    "no_div_loss": {"use_div_loss": False},
}


def protect_variant(name: str, models: Any, pcfg: Any, crops: Sequence[np.ndarray], store: Any,
                    device: Any) -> list[np.ndarray]:
    """Protected BGR crops (crop size) of one Table IV variant."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; expected one of {sorted(ABLATIONS)}")
    # in-process (workers=1): a few queries per variant would pay more for starting worker processes than
    # they gain, and the seconds column would then count the start-up
    prot = Protector(models.generator, models.reid, dataclasses.replace(pcfg, workers=1, **ABLATIONS[name]), device)
    try:
        return _protect_variant(name, prot, models, pcfg, crops, store)
    finally:
        prot.close()   # its worker processes, if protector.workers asked for them


def _protect_variant(name: str, prot: Protector, models: Any, pcfg: Any, crops: Sequence[np.ndarray],
                     store: Any) -> list[np.ndarray]:
    if name != "no_retrieval":
        return prot.protect_crops(list(crops), store)[0]
    if getattr(models, "latent_encoder", None) is None:
        raise ValueError("the no_retrieval ablation needs the latent encoder (models.latent_encoder)")
    parts = []
    bs = int(pcfg.batch_size)
    for s in range(0, len(crops), bs):
        batch = list(crops[s:s + bs])
        x = prot.prepare(batch)
        with torch.no_grad():
            w = models.latent_encoder(x).float().cpu().numpy()[:, None]   # E(I): [B, 1, L, C]
        n = len(batch)
        got = Retrieved(w, np.ones((n, 1), np.float32), np.full((n, 1), -1, np.int64), "E(I)")
        parts.append(prot.protect(x, got, prot.identity(batch)))
    return tensor_to_bgr(merge_results(parts).images, [c.shape[:2] for c in crops])


def run_ablations(models: Any, pcfg: Any, crops: Sequence[np.ndarray], store: Any, device: Any,
                  measure: Callable[[list[np.ndarray]], dict[str, Any]],
                  names: Sequence[str] = tuple(ABLATIONS), log: Callable[[str], None] | None = None,
                  ) -> list[dict[str, Any]]:
    """One Table IV row per variant: ``measure(protected crops)`` plus the variant's name and seconds."""
    rows = []
    for name in names:
        if log:
            log(f"ablation {name}: protecting {len(crops)} queries")
        t = time.perf_counter()
        imgs = protect_variant(name, models, pcfg, crops, store, device)
        rows.append({"variant": name, **measure(imgs), "seconds": time.perf_counter() - t})
    return rows


def _flops(fn: Callable[[], Any]) -> tuple[int, float]:
    """(FLOPs counted by torch.utils.flop_counter, seconds) of one call."""
    with FlopCounterMode(display=False) as counter:
        t = time.perf_counter()
        fn()
        secs = time.perf_counter() - t
    return int(counter.get_total_flops()), secs


def _params(net: Any) -> int | None:
    return int(sum(p.numel() for p in net.parameters())) if isinstance(net, torch.nn.Module) else None


def stage_costs(models: Any, pcfg: Any, crop: np.ndarray, store: Any, device: Any) -> list[dict[str, Any]]:
    """Table V for one crop: per stage, the network, its parameters, FLOPs and seconds (CPU/GPU as given)."""
    prot = Protector(models.generator, models.reid, pcfg, device)
    x = prot.prepare([crop])
    f = prot.identity([crop])
    rows: list[dict[str, Any]] = []

    def row(stage: str, net: str, params: int | None, fn: Callable[[], Any]) -> Any:
        out: dict[str, Any] = {}

        def call() -> None:
            out["v"] = fn()

        flops, secs = _flops(call)
        rows.append({"stage": stage, "network": net, "params": params, "flops": flops, "seconds": secs})
        return out["v"]

    row("embed f = E(I)", getattr(models.reid, "name", "reid"), _params(models.reid), lambda: prot.identity([crop]))
    got = None
    if store is not None:
        t = time.perf_counter()
        got = retrieve(store, f.cpu().numpy(), pcfg.m)
        rows.append({"stage": f"retrieve m={pcfg.m} (FAISS, not torch)", "network": "store", "params": None,
                     "flops": 2 * len(store) * int(f.shape[1]), "seconds": time.perf_counter() - t})
    enc = getattr(models, "latent_encoder", None)
    if got is None:
        if enc is None:
            return rows
        with torch.no_grad():
            lat = enc(x).float()[:, None].repeat(1, max(1, pcfg.m), 1, 1)
    else:
        lat = torch.as_tensor(got.latents, dtype=torch.float32, device=prot.device)
    if enc is not None:
        row("inversion E4E (store build / no_retrieval)", "latent encoder", _params(enc),
            lambda: enc(x) if not torch.is_grad_enabled() else enc(x).detach())
    w_star = row("inverse self-attention", "-", 0,
                 lambda: inverse_self_attention(lat, pcfg.temperature, pcfg.scale or None, pcfg.eps))
    # FlopCounterMode cannot watch autograd.grad: count one forward of G and E, backward taken as 2x forward
    with torch.no_grad():
        fwd, _ = _flops(lambda: prot.reid(render(prot.generator, w_star)))
    t = time.perf_counter()
    w_adv = identity_aligned_generation(w_star, x, f, prot.generator, prot.reid, prot.step_options)[0]
    rows.append({"stage": f"generate (T={pcfg.steps}; backward counted as 2x forward)", "network": "generator + re-ID",
                 "params": (_params(models.generator) or 0) + (_params(models.reid) or 0),
                 "flops": 3 * fwd * int(pcfg.steps), "seconds": time.perf_counter() - t})
    with torch.no_grad():
        row("render G(w_adv)", "generator", _params(models.generator), lambda: render(prot.generator, w_adv))
    return rows
