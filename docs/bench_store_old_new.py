"""Old (segments + log, commit 5ef1a50) vs new (SQLite) embedded store at N entries: CPU time of
add/build/open/search/retrieve, recall@10 and disk.

Usage: ``PYTHON docs/bench_store_old_new.py N WORKDIR [--latent-cache C] [--key-file K]``, once with
each venv (the store API differs only in create options; the last two flags need the new code).
Run it from a directory outside both source trees so the venv's installed package is imported.
Used for issue 12 acceptance 5 in docs/NOTES.md and docs/perf.md (CPU time is the figure on a
shared machine; wall time is context).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from latent_rag_ros.core.retrieval import retrieve
from latent_rag_ros.store.bench import synthetic_data
from latent_rag_ros.store.faiss_store import FaissStore


def pct(a: list[float]) -> dict[str, float]:
    ms = np.asarray(a) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int)
    ap.add_argument("workdir")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latent-cache", type=int, default=None, help="new code only: codes kept verified in memory")
    ap.add_argument("--key-file", default=None, help="new code only: an encrypted store")
    ap.add_argument("--warm-files", action="store_true",
                    help="read every store file once after opening (OS page cache warm for both formats)")
    a = ap.parse_args()
    n, path, q = a.n, a.workdir, a.queries
    shutil.rmtree(path, ignore_errors=True)
    data, qs = synthetic_data("structured", n, 512, q)
    block = np.random.default_rng(2).standard_normal((4096, 14, 512), dtype=np.float32)
    extra = {k: v for k, v in (("key_file", a.key_file),) if v is not None}
    try:
        s = FaissStore.create(path, 512, 14, 512, latent_dtype="float16", compact_wal_bytes=1 << 62, **extra)
        kind = "old"
    except TypeError:
        s = FaissStore.create(path, 512, 14, 512, latent_dtype="float16", snapshot_min=1 << 62, **extra)
        kind = "new"
    c, t = time.process_time(), time.perf_counter()
    for i in range(0, n, 50_000):
        s.add(data[i:i + 50_000], np.resize(block, (min(n, i + 50_000) - i, 14, 512)))
    add_cpu, add_wall = time.process_time() - c, time.perf_counter() - t
    s.compact()
    build_cpu, build_wall = time.process_time() - c, time.perf_counter() - t
    s.close()
    gc.collect()
    if a.latent_cache is not None:
        extra["latent_cache"] = a.latent_cache
    c, t = time.process_time(), time.perf_counter()
    s = FaissStore(path, verify="size", **extra)
    open_cpu, open_wall = time.process_time() - c, time.perf_counter() - t
    if a.warm_files:
        for p in Path(path).iterdir():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
    for i in range(20):
        s.search(qs[i:i + 1], 10)
    sc, sw, rc, rw = [], [], [], []
    for i in range(q):
        c0, t0 = time.thread_time(), time.perf_counter()
        s.search(qs[i:i + 1], 10)
        sw.append(time.perf_counter() - t0)
        sc.append(time.thread_time() - c0)
        c0, t0 = time.thread_time(), time.perf_counter()
        retrieve(s, qs[i:i + 1], 10)
        rw.append(time.perf_counter() - t0)
        rc.append(time.thread_time() - c0)
    _, got = s.search(qs, 10)
    _, truth = faiss.knn(qs, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    rec = float(np.mean([len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(got, truth)]))
    st = s.stats()
    print(json.dumps({
        "code": kind, "n": n, "add_cpu_s": round(add_cpu, 1), "add_wall_s": round(add_wall, 1),
        "build_cpu_s": round(build_cpu, 1), "build_wall_s": round(build_wall, 1), "open_cpu_s": round(open_cpu, 2),
        "open_wall_s": round(open_wall, 2), "search_cpu": pct(sc), "search_wall": pct(sw), "retrieve_cpu": pct(rc),
        "retrieve_wall": pct(rw), "recall_at_10": round(rec, 4), "ef_search": st["index"].get("ef_search"),
        "latent_cache": st.get("latent_cache"), "warm_files": a.warm_files, "encryption": st.get("encryption", "none"),
        "disk_mb": round(sum(p.stat().st_size for p in Path(path).iterdir()) / 2**20, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()]}))
    s.close()
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
