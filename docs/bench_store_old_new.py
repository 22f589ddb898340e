"""Old (main) vs new (store branch) embedded store at n entries: CPU time of add/build/open/search/retrieve.

Usage: PYTHON docs/bench_store_old_new.py N WORKDIR (run once with each venv; the store API differs
only in create options). Used for the issue 12.4 comparison in docs/NOTES.md.
"""
import gc, json, shutil, sys, time
import numpy as np
import faiss
from latent_rag_ros.store.bench import synthetic_data
from latent_rag_ros.store.faiss_store import FaissStore
from latent_rag_ros.core.retrieval import retrieve

n, path, q = int(sys.argv[1]), sys.argv[2], 1000
shutil.rmtree(path, ignore_errors=True)
data, qs = synthetic_data("structured", n, 512, q)
block = np.random.default_rng(2).standard_normal((4096, 14, 512), dtype=np.float32)
try:
    s = FaissStore.create(path, 512, 14, 512, latent_dtype="float16", compact_wal_bytes=1 << 62)
    kind = "old"
except TypeError:
    s = FaissStore.create(path, 512, 14, 512, latent_dtype="float16", snapshot_min=1 << 62)
    kind = "new"
c, t = time.process_time(), time.perf_counter()
for a in range(0, n, 50_000):
    s.add(data[a:a + 50_000], np.resize(block, (min(n, a + 50_000) - a, 14, 512)))
add_cpu, add_wall = time.process_time() - c, time.perf_counter() - t
s.compact()
build_cpu, build_wall = time.process_time() - c, time.perf_counter() - t
s.close(); gc.collect()
c, t = time.process_time(), time.perf_counter()
s = FaissStore(path, verify="size")
open_cpu, open_wall = time.process_time() - c, time.perf_counter() - t
def pct(a): a = np.asarray(a) * 1e3; return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}
for i in range(20): s.search(qs[i:i + 1], 10)
sc, sw, rc, rw = [], [], [], []
for i in range(q):
    c0, t0 = time.thread_time(), time.perf_counter(); s.search(qs[i:i + 1], 10); sw.append(time.perf_counter() - t0); sc.append(time.thread_time() - c0)
    c0, t0 = time.thread_time(), time.perf_counter(); retrieve(s, qs[i:i + 1], 10); rw.append(time.perf_counter() - t0); rc.append(time.thread_time() - c0)
_, got = s.search(qs, 10)
_, truth = faiss.knn(qs, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
rec = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, truth)]))
import os
print(json.dumps({"code": kind, "n": n, "add_cpu_s": round(add_cpu, 1), "add_wall_s": round(add_wall, 1), "build_cpu_s": round(build_cpu, 1),
  "build_wall_s": round(build_wall, 1), "open_cpu_s": round(open_cpu, 2), "open_wall_s": round(open_wall, 2), "search_cpu": pct(sc), "search_wall": pct(sw),
  "retrieve_cpu": pct(rc), "retrieve_wall": pct(rw), "recall_at_10": round(rec, 4), "ef_search": s.stats()["index"].get("ef_search"),
  "disk_mb": round(sum(p.stat().st_size for p in __import__("pathlib").Path(path).iterdir()) / 2**20, 1), "loadavg": os.getloadavg()}))
s.close(); shutil.rmtree(path, ignore_errors=True)
