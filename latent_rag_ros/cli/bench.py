"""``latent-rag bench protect``: the authors' reference loop, today's eager loop and the fast path, side by side.

For each generator architecture (random weights: timings do not depend on the weights) and batch size,
one process runs, on the same weights, crops and throw-away store:
- (a) ``reference``: the authors' update rule (schedule ``authors``: two forward and backward passes
  per step, MI-FGSM 0.9), fp32, eager (``protector.fast_path=false``): the speed baseline;
- (e) ``eager``: the package's eager loop of the configured schedule (the paper's I-FGSM by default);
- (b) ``fast``: the fast path of the configured schedule (core/fastpath.py).
It prints ms/crop (median of the repeats, paths taken in turn), per-stage ms/crop, peak memory (autograd
saved tensors on any device; the allocator peak on CUDA), speed-ups a/b and e/b, and the deviation of (b)
from (e): max |dw_adv|, the share of flipped sign steps and the SSIM between their images.

``--variants`` adds measurement-only paths (docs/perf.md, issue 17's CPU target), each compared with (e)
like (b): ``channels-last`` / ``folded`` (``protector.fast_reid=channels_last`` / ``folded``),
``compile-reid`` / ``compile-synthesis`` (``torch.compile``, inductor, of E in L_id or of G.synthesis;
the untimed warm-up run includes the compilation, reported as ``warmup_s``), ``eager-b1`` (the eager loop
one crop at a time: the eager path's own spread across batch sizes), ``workers`` / ``workers-folded``
(the fast path, in-process E or folded E, with its T-step loops in ``--workers`` one-thread processes,
core/parallel.py). A path with workers is also compared with the in-process loop (eager-equal) run on
the same chunks at one thread from the same w* and f (``same_chunks``): that is the comparison in which
it is exact. Its saved-tensor memory lives in the
workers and is not counted (nan).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from latent_rag_ros.cli.args import config_from_args

# Official NVlabs constructor kwargs (stylegan3 train.py: T = cbase/cmax; R = conv_kernel 1, radial filters,
# doubled cbase/cmax). 256x256 T as released (stylegan3-t-ffhqu-256x256: cbase 16384); the StyleGAN-Human
# rectangular R uses train.py's default cbase 32768 (doubled for R), 16 W+ rows as the 256/512 models.
_T = {"channel_base": 32768, "channel_max": 512}
_R = {"channel_base": 65536, "channel_max": 1024, "conv_kernel": 1, "use_radial_filters": True}
_NAME = re.compile(r"^sg3(?P<cfg>[tr])(?P<human>-human)?-(?P<h>\d+)(?:x(?P<w>\d+))?$")


def generator_spec(name: str) -> dict[str, Any] | None:
    """Official StyleGAN3 kwargs for ``sg3t-256``, ``sg3r-human-512x256``, ``sg3t-64`` ...; None for ``demo``."""
    if name == "demo":
        return None
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"unknown generator {name!r}: use demo, sg3t-RES, sg3r-RES or sg3[t|r]-human-HxW")
    h = int(m["h"])
    human = m["human"] is not None
    if (h & (h - 1)) or h < 16:
        raise ValueError(f"{name}: the resolution must be a power of two >= 16")
    if human != (m["w"] is not None) or (human and int(m["w"]) * 2 != h):
        raise ValueError(f"{name}: StyleGAN-Human sizes are HxW with W = H/2 (e.g. sg3r-human-512x256)")
    kw = dict(_T if m["cfg"] == "t" else _R)
    if m["cfg"] == "t" and h <= 256 and not human:
        kw["channel_base"] = 16384
    return dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=h, img_channels=3, square=not human, **kw)


def build_bench_generator(name: str, cfg: Any, device: torch.device) -> torch.nn.Module:
    """A random-weight generator of architecture ``name``; ``demo``: the shipped demo generator."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.models.factory import build_generator as build_cfg_generator
    from latent_rag_ros.models.generator_io import build_generator

    spec = generator_spec(name)
    if spec is None:
        g = build_cfg_generator(replace(cfg, models=replace(cfg.models, generator="demo")), device)[0]
    else:
        torch.manual_seed(0)
        g = build_generator("stylegan3", spec)
    return g.to(device).eval().requires_grad_(False)


class SavedTensorMemory:
    """Peak bytes of tensors held for backward (autograd saved tensors), counted while they are alive.

    A device-independent measure of a loop's activation memory (CPU has no allocator peak); the
    parameters, inputs and allocator caches are not included.
    """

    class _Held:
        def __init__(self, owner: SavedTensorMemory, t: torch.Tensor) -> None:
            self.owner, self.t = owner, t
            self.nbytes = t.untyped_storage().nbytes() if t.layout == torch.strided else 0
            owner.live += self.nbytes
            owner.peak = max(owner.peak, owner.live)

        def __del__(self) -> None:
            self.owner.live -= self.nbytes

    def __init__(self) -> None:
        self.live = self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: self._Held(self, t), lambda h: h.t)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def __enter__(self) -> SavedTensorMemory:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def _cuda_peak_mb(device: torch.device) -> float:
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _ssim_min_mean(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.core.imaging import tensor_to_bgr
    from latent_rag_ros.eval.metrics import ssim

    vals = [ssim(x, y) for x, y in zip(tensor_to_bgr(a), tensor_to_bgr(b))]
    return min(vals), statistics.mean(vals)


VARIANTS = ("channels-last", "folded", "compile-reid", "compile-synthesis", "eager-b1", "workers", "workers-folded")


class _OneByOne:
    """The eager Protector run one crop at a time (same interface as Protector for the benchmark)."""

    def __init__(self, prot: Any) -> None:
        self.prot, self.device = prot, prot.device

    def protect_with_store(self, images: torch.Tensor, store: Any) -> Any:
        from latent_rag_ros.core.protector import merge_results

        return merge_results([self.prot.protect_with_store(images[i:i + 1], store) for i in range(len(images))])


def build_variant(name: str, g: torch.nn.Module, reid: torch.nn.Module, cfg: Any, device: torch.device,
                  workers: int = 0) -> Any:
    """A measurement-only path ``name`` (see VARIANTS) on the fast path of ``cfg``; its own copies of G/E.

    ``workers``: processes of the ``workers*`` variants (0 = one per CPU core); the others run in-process."""
    from latent_rag_ros.core.protector import Protector

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: use {', '.join(VARIANTS)}")
    if name == "eager-b1":
        return _OneByOne(Protector(g, reid, replace(cfg, fast_path=False), device))
    fast_reid = {"folded": "folded", "channels-last": "channels_last", "workers-folded": "folded"}.get(name, "off")
    n = workers if name.startswith("workers") else 1
    prot = Protector(g, reid, replace(cfg, fast_path=True, fast_reid=fast_reid, workers=n), device)
    if prot.pool is not None:
        prot.pool.start()
    if name == "compile-reid":
        prot.loss_reid = torch.compile(copy.deepcopy(reid))
    elif name == "compile-synthesis":
        g2 = copy.deepcopy(g)
        g2.synthesis = torch.compile(g2.synthesis)
        prot.generator = g2
    return prot


def _run_paths(prots: dict[str, Any], images: torch.Tensor, store: Any, repeats: int) -> dict[str, Any]:
    """Per path: median per-stage ms over ``repeats`` runs taken in turn (a, e, b, a, e, b, ...), so a change
    of machine load hits every path alike; peak memory; the last result. The first, untimed run of each path
    at this batch size is the warm-up and counts the saved-tensor memory (not for compiled variants, whose
    warm-up compiles: there only its seconds are kept)."""
    out: dict[str, Any] = {}
    for key, prot in prots.items():
        t0 = time.perf_counter()
        if key.startswith("compile") or getattr(prot, "pool", None) is not None:
            prot.protect_with_store(images, store)
            saved = float("nan")
        else:
            with SavedTensorMemory() as mem:
                prot.protect_with_store(images, store)
            saved = mem.peak_mb
        out[key] = {"runs": [], "saved_mb": saved, "warmup_s": time.perf_counter() - t0}
    for _ in range(repeats):
        for key, prot in prots.items():
            if prot.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(prot.device)
            res = prot.protect_with_store(images, store)
            out[key]["runs"].append(res.timings_ms)
            out[key]["result"] = res
            if prot.device.type == "cuda":
                out[key]["cuda_peak_mb"] = max(out[key].get("cuda_peak_mb", 0.0), _cuda_peak_mb(prot.device))
    for v in out.values():
        v["ms"] = {k: statistics.median(r.get(k, 0.0) for r in v["runs"]) for k in v["runs"][0]}
    return out


def bench_protect(args: argparse.Namespace) -> int:
    """Run the side-by-side benchmark; JSON lines per (generator, batch, path), then a summary table."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.core.fastpath import step_deviation
    from latent_rag_ros.core.protector import Protector, resolve_device
    from latent_rag_ros.models.factory import build_reid
    from latent_rag_ros.store import open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    device = resolve_device(cfg.protector.device)
    reid = build_reid(cfg, device)
    base = cfg.protector
    paths = {
        "reference": replace(base, schedule="authors", momentum=0.0, fast_path=False, dtype="float32"),
        "eager": replace(base, fast_path=False),
        "fast": replace(base, fast_path=True),
    }
    variants = [v for v in getattr(args, "variants", "").split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"latent-rag bench protect: unknown variant {v!r} (use {', '.join(VARIANTS)})")
    rows: list[dict[str, Any]] = []
    print(json.dumps({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "reid": getattr(reid, "name", cfg.models.reid), "m": base.m, "T": base.steps,
                      "schedule": base.schedule, "repeats": args.repeats}), flush=True)
    rng = np.random.default_rng(0)
    for name in [g for g in args.generator.split(",") if g]:
        t0 = time.perf_counter()
        g = build_bench_generator(name, cfg, device)
        prots = {k: Protector(g, reid, c, device) for k, c in paths.items()}
        prots.update({v: build_variant(v, g, reid, base, device, args.workers) for v in variants})
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(f"{tmp}/store", create=True, dim=reid.dim, num_ws=g.num_ws, w_dim=g.w_dim)
            n = max(32, base.m * 4)
            with torch.no_grad():
                ws = g.mapping(torch.randn(n, g.z_dim, device=device)).cpu().numpy()
            store.add(rng.normal(size=(n, reid.dim)).astype(np.float32), ws)
            print(json.dumps({"generator": name, "size": [g.img_height, g.img_width], "num_ws": g.num_ws,
                              "setup_s": round(time.perf_counter() - t0, 1)}), flush=True)
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                images = torch.rand(bs, 3, *prots["fast"].working_size, device=device,
                                    generator=torch.Generator(device=device).manual_seed(bs))
                got = _run_paths(prots, images, store, args.repeats)
                for key, v in got.items():
                    ms = v["ms"]
                    row = {"generator": name, "batch": bs, "path": key, "ms_per_crop": round(ms["total"] / bs, 1),
                           "stages_ms_per_crop": {k: round(x / bs, 1) for k, x in ms.items() if k != "total"},
                           "saved_tensors_peak_mb": round(v["saved_mb"], 1), "warmup_s": round(v["warmup_s"], 1)}
                    if "cuda_peak_mb" in v:
                        row["cuda_peak_mb"] = round(v["cuda_peak_mb"], 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                eager = got["eager"]["result"]
                for key in ["fast", *variants]:
                    res = got[key]["result"]
                    s_min, s_mean = _ssim_min_mean(res.images, eager.images)
                    dev = {"generator": name, "batch": bs, "path": key, "deviation": {
                        **step_deviation(res.w_adv, eager.w_adv, prots["fast"].step_options),
                        "ssim_min": round(s_min, 4), "ssim_mean": round(s_mean, 4)}}
                    pool = getattr(prots[key], "pool", None)
                    if pool is not None:
                        dev["same_chunks"] = _same_chunks_deviation(res, images, g, reid, prots[key].cfg, device,
                                                                    pool.workers)
                    rows.append(dev)
                    print(json.dumps(dev), flush=True)
            store.close()
        for prot in prots.values():
            if hasattr(prot, "close"):
                prot.close()
    _print_table(rows)
    return 0


def _same_chunks_deviation(res: Any, images: torch.Tensor, g: torch.nn.Module, reid: torch.nn.Module, cfg: Any,
                           device: torch.device, workers: int) -> dict[str, float]:
    """A workers path against the in-process loop (same E mode) on the chunks an idle pool made, at one thread.

    Both start from the path's own w* and f: fusing the codes (eq. 3-5) or embedding at another batch size
    rounds differently, and that is not the loop's doing. The in-process fast path is bit-identical to eager
    (test_fastpath.py), so with E as is this is the comparison with eager on the same chunks.
    """
    from latent_rag_ros.core.fastpath import fast_generation, step_deviation
    from latent_rag_ros.core.parallel import chunk_sizes
    from latent_rag_ros.core.protector import Protector

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = Protector(g, reid, replace(cfg, workers=1), device)   # same fast_reid, same update rule
        w_adv, imgs, start = [], [], 0
        for n in chunk_sizes(len(images), workers):
            sl = slice(start, start + n)
            start += n
            out = fast_generation(res.w_star[sl], images[sl], res.identity[sl], ref.generator, ref.loss_reid,
                                  ref.step_options, ref.batched_backward)
            w_adv.append(out.w_adv)
            imgs.append(out.images)
    finally:
        torch.set_num_threads(threads)
    s_min, s_mean = _ssim_min_mean(res.images, torch.cat(imgs))
    return {**step_deviation(res.w_adv, torch.cat(w_adv), ref.step_options), "ssim_min": round(s_min, 4),
            "ssim_mean": round(s_mean, 4)}


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown summary: ms/crop of each path, speed-ups and the deviation of (b) and each variant from eager."""
    timed = {(r["generator"], r["batch"], r["path"]): r for r in rows if "ms_per_crop" in r}
    devs = [r for r in rows if "deviation" in r]
    print("\n| generator | batch | path | (a) reference ms/crop | eager ms/crop | path ms/crop | a/path | eager/path "
          "| saved-tensor MB a / path | max abs dw | entries differing | flipped steps | SSIM min / mean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in devs:
        gen, bs, key, d = r["generator"], r["batch"], r["path"], r["deviation"]
        a, e, b = (timed[(gen, bs, k)] for k in ("reference", "eager", key))
        print(f"| {gen} | {bs} | {key} | {a['ms_per_crop']} | {e['ms_per_crop']} | {b['ms_per_crop']} "
              f"| {a['ms_per_crop'] / b['ms_per_crop']:.2f} | {e['ms_per_crop'] / b['ms_per_crop']:.2f} "
              f"| {a['saved_tensors_peak_mb']:.0f} / {b['saved_tensors_peak_mb']:.0f} | {d['max_abs_dw']:.3g} "
              f"| {d['entries_differing']:.2%} | {d['flipped_steps']:.2%} "
              f"| {d['ssim_min']:.4f} / {d['ssim_mean']:.4f} |")
    same = [r for r in devs if "same_chunks" in r]
    if same:
        print("\nPaths with worker processes against the in-process loop on the same chunks at one thread, from the "
              "same w* and f (where they are exact):")
        print("\n| generator | batch | path | max abs dw | entries differing | flipped steps | SSIM min / mean |")
        print("|---|---|---|---|---|---|---|")
        for r in same:
            d = r["same_chunks"]
            print(f"| {r['generator']} | {r['batch']} | {r['path']} | {d['max_abs_dw']:.3g} "
                  f"| {d['entries_differing']:.2%} | {d['flipped_steps']:.2%} "
                  f"| {d['ssim_min']:.4f} / {d['ssim_mean']:.4f} |")
