"""``latent-rag bench store``: build time, search latency and recall of the embedded store by size.

Two synthetic data models (no re-ID data set exists offline), both ``n / 20`` identities of 20
images each; queries are new images of stored identities, as in the paper's retrieval; recall@10
compares the store's answer with exact inner-product search (``faiss.knn``).

- ``structured`` (default), calibrated to real CNN embeddings of people: 1232 HOG crops of
  vtest.avi through the DeepSORT MobileNetV2 (1280-d) have mean pairwise cosine 0.68,
  participation ratio 13.1 and 90% of their variance in 127 directions. Model: a common
  direction (weight 1.7) plus identity and within-identity parts (weight 0.6) drawn with a
  power-law spectrum ``j^-1.2`` in a random orthonormal basis, normalised. In 512-d this gives
  different-identity cosine 0.68, same-identity 0.92, participation ratio 13.6, 90% variance in
  115 directions.
- ``isotropic`` (worst case for any ANN index): random unit centres plus isotropic noise
  (``spread`` 1.0: same-identity cosine about 0.5, different about 0); nothing but the cluster
  structure to route on.

Numbers are measured with this command, never with timed tests.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from latent_rag_ros.core.imaging import from_generator
from latent_rag_ros.core.retrieval import retrieve
from latent_rag_ros.store.crypto import generate_key_file
from latent_rag_ros.store.faiss_store import FaissStore


def clustered_vectors(n: int, dim: int, per_identity: int = 20, spread: float = 1.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normalised vectors in ``n / per_identity`` identity clusters; returns (vectors, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_identity), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x = centres[rng.integers(0, len(centres), e - s)]
        x += (spread / math.sqrt(dim)) * rng.standard_normal((e - s, dim), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


class StructuredIdentities:
    """The ``structured`` data model (see the module docstring); ``sample(identities)`` draws images."""

    def __init__(self, n_identities: int, dim: int, alpha: float = 1.2, common: float = 1.7,
                 within: float = 0.6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.basis = q.astype(np.float32)
        s = np.arange(1, dim + 1, dtype=np.float32) ** (-alpha / 2)
        self.scale = (s / np.sqrt((s**2).sum())).astype(np.float32)
        self.common = common * self.basis[:, -1]
        self.within = within
        self.centres = rng.standard_normal((n_identities, dim), dtype=np.float32) * self.scale

    def sample(self, identities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Normalised images of the given identities."""
        e = rng.standard_normal((len(identities), self.basis.shape[0]), dtype=np.float32) * self.scale
        x = self.common + (self.centres[identities] + self.within * e) @ self.basis.T
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_data(kind: str, n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(store vectors [n, dim], query vectors [queries, dim]) of data model ``kind``."""
    if kind == "isotropic":
        data, centres = clustered_vectors(n, dim, seed=seed)
        return data, identity_queries(centres, queries, seed=seed + 1)
    if kind != "structured":
        raise ValueError(f"data model must be 'structured' or 'isotropic', got {kind!r}")
    model = StructuredIdentities(max(1, n // 20), dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    data = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        data[s:e] = model.sample(rng.integers(0, len(model.centres), e - s), rng)
    return data, model.sample(rng.integers(0, len(model.centres), queries), rng)


def identity_queries(centres: np.ndarray, q: int, spread: float = 1.0, seed: int = 1) -> np.ndarray:
    """New normalised samples of ``q`` random stored identities."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    noise = rng.standard_normal((q, dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), q)] + (spread / math.sqrt(dim)) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pct(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def bench_one(n: int, dim: int, queries: int, latent_shape: tuple[int, int], latent_dtype: str, workdir: Path,
              say: Callable[[str], None] = print, data_model: str = "structured",
              key_file: str | None = None) -> dict[str, Any]:
    """Build a store of ``n`` entries under ``workdir`` (encrypted with ``key_file``), reopen it, time queries."""
    path = workdir / f"store_{n}"
    if path.exists():
        shutil.rmtree(path)
    t = time.perf_counter()
    data, qs = synthetic_data(data_model, n, dim, queries)
    gen_s = time.perf_counter() - t
    L, C = latent_shape
    rng = np.random.default_rng(2)
    block = rng.standard_normal((min(n, 4096), L, C), dtype=np.float32)  # W+ payload (content irrelevant here)
    t = time.perf_counter()
    store = FaissStore.create(path, dim, L, C, latent_dtype=latent_dtype, key_file=key_file, snapshot_min=1 << 62)
    step = 50_000
    for s in range(0, n, step):
        e = min(n, s + step)
        lat = np.resize(block, (e - s, L, C))
        store.add(data[s:e], lat)
        del lat
    t_add = time.perf_counter() - t
    store.compact()
    build_s = time.perf_counter() - t
    store.close()
    gc.collect()
    t = time.perf_counter()
    FaissStore(path, read_only=True, verify="size", key_file=key_file).close()
    open_quick_s = time.perf_counter() - t
    t = time.perf_counter()
    store = FaissStore(path, verify="full", key_file=key_file)
    open_s = time.perf_counter() - t
    st = store.stats()
    for i in range(min(20, queries)):  # warm-up
        store.search(qs[i: i + 1], 10)
    lat10, cpu10 = [], []
    for i in range(queries):
        c0, t0 = time.thread_time(), time.perf_counter()
        store.search(qs[i: i + 1], 10)
        lat10.append(time.perf_counter() - t0)
        cpu10.append(time.thread_time() - c0)
    lat_ret, cpu_ret = [], []
    for i in range(queries):
        c0, t0 = time.thread_time(), time.perf_counter()
        retrieve(store, qs[i: i + 1], 10)
        lat_ret.append(time.perf_counter() - t0)
        cpu_ret.append(time.thread_time() - c0)
    _, got = store.search(qs, 10)
    t = time.perf_counter()
    _, truth = faiss.knn(qs, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, truth)]))
    res = {
        "n": n, "encryption": st["encryption"], "data": data_model, "dim": dim, "latent_shape": [L, C],
        "latent_dtype": latent_dtype,
        "index": st["index"],
        "build_s": round(build_s, 2), "add_s": round(t_add, 2), "open_verify_s": round(open_s, 2),
        "open_s": round(open_quick_s, 2),
        "search_k10": _pct(lat10), "retrieve_m10": _pct(lat_ret), "recall_at_10": round(recall, 4),
        "search_k10_cpu": _pct(cpu10), "retrieve_m10_cpu": _pct(cpu_ret),
        "queries": queries, "data_gen_s": round(gen_s, 2), "truth_s": round(time.perf_counter() - t, 2),
        "disk_mb": round(sum(p.stat().st_size for p in path.iterdir()) / 2**20, 1),
    }
    store.close()
    say(json.dumps(res))
    return res


def bench_store(
    sizes: list[int],
    dim: int = 512,
    queries: int = 1000,
    out: str | None = None,
    latent_shape: tuple[int, int] = (14, 512),
    big_latent_shape: tuple[int, int] = (1, 8),
    big_from: int = 1_000_000,
    latent_dtype: str = "float16",
    workdir: str | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
    data_model: str = "structured",
    key_file: str | None = None,
) -> dict[str, Any]:
    """Run :func:`bench_one` for each size (sizes >= ``big_from`` use ``big_latent_shape``)."""
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="latent_rag_bench_"))
    base.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
                              "data_model": f"{data_model} (see latent_rag_ros/store/bench.py)",
                              "load_average_before": list(os.getloadavg()), "results": []}
    try:
        for n in sizes:
            shape = big_latent_shape if n >= big_from else latent_shape
            report["results"].append(bench_one(n, dim, queries, shape, latent_dtype, base, say, data_model,
                                                key_file))
            if not keep:
                shutil.rmtree(base / f"store_{n}", ignore_errors=True)
    finally:
        if not keep and not workdir:
            shutil.rmtree(base, ignore_errors=True)
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def fp16_identity_cost(generator: Any, reid: Any, n: int = 16, seed: int = 0,
                       truncation_psi: float = 0.7) -> dict[str, float]:
    """What storing W+ codes as float16 costs: re-ID cosine between images from fp32 and fp16 codes.

    Samples ``n`` W+ codes from the generator's mapping network, rounds them to float16 and back,
    generates both, embeds both with ``reid`` and reports the codes' error and the identity
    cosine (1.0 = no cost).
    """
    g = torch.Generator().manual_seed(seed)
    dev = next(iter(generator.parameters())).device
    with torch.no_grad():
        z = torch.randn(n, generator.z_dim, generator=g).to(dev)
        ws = generator.mapping(z, None, truncation_psi=truncation_psi).float()
        ws16 = ws.half().float()
        img32 = from_generator(generator.synthesis(ws, noise_mode="const"))
        img16 = from_generator(generator.synthesis(ws16, noise_mode="const"))
        f32, f16 = reid(img32), reid(img16)
        cos = torch.nn.functional.cosine_similarity(f32, f16, dim=1)
    err = (ws16 - ws).abs()
    return {
        "n": n, "latent_max_abs_err": float(err.max()),
        "latent_rel_l2_err": float(((ws16 - ws).flatten(1).norm(dim=1) / ws.flatten(1).norm(dim=1)).mean()),
        "pixel_max_abs_diff": float((img32 - img16).abs().max()),
        "identity_cos_mean": float(cos.mean()), "identity_cos_min": float(cos.min()),
    }


def bench_encryption(n: int, dim: int = 512, queries: int = 1000, latent_shape: tuple[int, int] = (14, 512),
                     latent_dtype: str = "float16", workdir: str | None = None, rounds: int = 3,
                     say: Callable[[str], None] = print, data_model: str = "structured") -> dict[str, Any]:
    """Encrypted vs unencrypted store of the same ``n`` entries, measured interleaved in one process.

    Builds one store, copies it and re-keys the copy (AES-256-GCM), then alternates between the two
    for every measurement (open, each query, each retrieval), so a busy machine slows both alike.
    """
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="latent_rag_bench_enc_"))
    keydir = Path(tempfile.mkdtemp(prefix="latent_rag_key_"))
    key = str(keydir / "bench.key")
    generate_key_file(key)
    try:
        plain, enc = base / f"plain_{n}", base / f"enc_{n}"
        shutil.rmtree(plain, ignore_errors=True)
        shutil.rmtree(enc, ignore_errors=True)
        data, qs = synthetic_data(data_model, n, dim, queries)
        L, C = latent_shape
        block = np.random.default_rng(2).standard_normal((min(n, 4096), L, C), dtype=np.float32)
        t = time.perf_counter()
        s = FaissStore.create(plain, dim, L, C, latent_dtype=latent_dtype, snapshot_min=1 << 62)
        for a in range(0, n, 50_000):
            s.add(data[a: a + 50_000], np.resize(block, (min(n, a + 50_000) - a, L, C)))
        s.compact()
        s.close()
        build_s = time.perf_counter() - t
        shutil.copytree(plain, enc)
        t = time.perf_counter()
        with FaissStore(enc, verify="size") as s:
            s.rekey(key)
        rekey_s = time.perf_counter() - t
        opts = {"plain": {}, "enc": {"key_file": key}}
        paths = {"plain": plain, "enc": enc}
        opens: dict[str, list[float]] = {"plain": [], "enc": []}
        open_cpu: dict[str, list[float]] = {"plain": [], "enc": []}
        for _ in range(rounds):
            for kind in ("plain", "enc"):
                gc.collect()
                c, t = time.process_time(), time.perf_counter()
                FaissStore(paths[kind], read_only=True, verify="size", **opts[kind]).close()
                opens[kind].append(time.perf_counter() - t)
                open_cpu[kind].append(time.process_time() - c)
        stores = {k: FaissStore(paths[k], read_only=True, verify="size", **opts[k]) for k in paths}
        lat: dict[str, list[float]] = {"plain": [], "enc": []}
        ret: dict[str, list[float]] = {"plain": [], "enc": []}
        cpu: dict[str, list[float]] = {"plain": [], "enc": []}
        cpu_ret: dict[str, list[float]] = {"plain": [], "enc": []}
        for i in range(queries):
            # ABBA order: at 1M each HNSW index is ~2.3 GB, and a search right after the other store's
            # work starts with cold caches; a fixed order once made the second store look 44% slower
            for k, st in (list(stores.items()) if i % 2 == 0 else list(stores.items())[::-1]):
                c0, t0 = time.thread_time(), time.perf_counter()
                st.search(qs[i: i + 1], 10)
                lat[k].append(time.perf_counter() - t0)
                cpu[k].append(time.thread_time() - c0)
                c0, t0 = time.thread_time(), time.perf_counter()
                retrieve(st, qs[i: i + 1], 10)
                ret[k].append(time.perf_counter() - t0)
                cpu_ret[k].append(time.thread_time() - c0)
        _, truth = faiss.knn(qs, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
        res: dict[str, Any] = {"n": n, "latent_shape": [L, C], "latent_dtype": latent_dtype,
                               "build_s": round(build_s, 2), "rekey_s": round(rekey_s, 2),
                               "load_average": list(os.getloadavg())}
        for k, st in stores.items():
            _, got = st.search(qs, 10)
            res[k] = {"open_s_median": round(float(np.median(opens[k])), 3), "search_k10": _pct(lat[k]),
                      "retrieve_m10": _pct(ret[k]), "search_k10_cpu": _pct(cpu[k]),
                      "retrieve_m10_cpu": _pct(cpu_ret[k]),
                      "open_cpu_s_median": round(float(np.median(open_cpu[k])), 3), "recall_at_10": round(float(np.mean(
                          [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, truth)])), 4),
                      "disk_mb": round(sum(p.stat().st_size for p in paths[k].iterdir()) / 2**20, 1)}
            st.close()
        say(json.dumps(res))
        return res
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
        if not workdir:
            shutil.rmtree(base, ignore_errors=True)
