"""Crop-parallel T-step loops (core/parallel.py): real worker processes, bit-identical to eager per chunk.

Real parts: spawned worker processes, the project's StyleGAN3 at a tiny size with random weights (no
pretrained StyleGAN exists offline) and the real DeepSORT MobileNetV2 re-ID with its shipped weights at
a small input size. Nothing is timed here: the speed is measured by ``latent-rag bench protect``
(docs/perf.md).
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

from latent_rag_ros.config import ProtectorConfig
from latent_rag_ros.core.fastpath import fast_generation
from latent_rag_ros.core.generation import StepOptions, identity_aligned_generation
from latent_rag_ros.core.parallel import GenerationPool, chunk_sizes, resolve_workers
from latent_rag_ros.core.protector import Protector
from latent_rag_ros.core.retrieval import Retrieved
from latent_rag_ros.models.reid import load_reid

from nets import loop_inputs, tiny_stylegan3
from procutil import running

OPTS = StepOptions(steps=3, coarse_step=0.02, fine_step=0.05)


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    g = tiny_stylegan3()
    return g, load_reid("deepsort_mobilenetv2", input_size=(64, 32)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pool(models):
    p = GenerationPool(*models, workers=2)
    p.start()
    yield p
    p.close()


@pytest.fixture(autouse=True)
def one_thread():
    """The workers run at one intra-op thread; the in-process references must too, to be comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("batch", "workers", "sizes"), [
    (8, 2, [4, 4]), (3, 2, [2, 1]), (5, 3, [2, 2, 1]), (1, 4, [1]), (0, 2, []), (7, 1, [7]),
])
def test_chunk_sizes(batch: int, workers: int, sizes: list[int]) -> None:
    assert chunk_sizes(batch, workers) == sizes


def test_chunk_sizes_and_workers_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="workers >= 1"):
        chunk_sizes(4, 0)
    with pytest.raises(ValueError, match=r"protector\.workers must be >= 0"):
        resolve_workers(-1, torch.device("cpu"))
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert 1 <= resolve_workers(0, torch.device("cpu")) <= len(os.sched_getaffinity(0))
    assert resolve_workers(4, torch.device("cuda")) == 1   # no device needed: only the type is read


def test_one_per_core_honours_a_cpu_cap(monkeypatch) -> None:
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")   # loky's documented cap, beside affinity and cgroup quota
    assert resolve_workers(0, torch.device("cpu")) == 1


CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


@pytest.mark.skipif(not (os.geteuid() == 0 and os.path.isfile(f"{CGROUP_V1_CPU}/cpu.cfs_quota_us")
                         and len(os.sched_getaffinity(0)) > 1),
                    reason="needs root, a cgroup v1 cpu controller and more than one CPU in the affinity mask")
def test_one_per_core_counts_a_container_cpu_quota(tmp_path) -> None:
    """A real 1-CPU quota, seen as a container sees it (its own cgroup namespace and mount, as docker --cpus 1
    makes): protector.workers 0 resolves to 1 although the affinity mask shows every core of the host."""
    import subprocess
    import sys
    import uuid

    group = f"{CGROUP_V1_CPU}/lrr-test-{uuid.uuid4().hex[:8]}"
    try:
        os.mkdir(group)
    except OSError as exc:   # a read-only cgroup file system (inside a container)
        pytest.skip(f"cannot create a cgroup here: {exc}")
    try:
        with open(f"{group}/cpu.cfs_period_us", "w") as fh:
            fh.write("100000")
        with open(f"{group}/cpu.cfs_quota_us", "w") as fh:
            fh.write("100000")   # one CPU's worth of time per period
        probe = ("import os, torch; from latent_rag_ros.core.parallel import resolve_workers; "
                 "print(len(os.sched_getaffinity(0)), resolve_workers(0, torch.device('cpu')))")
        inner = (f"mkdir -p {tmp_path}/cg && mount -t cgroup -o cpu none {tmp_path}/cg && "
                 f"mount --bind {tmp_path}/cg {CGROUP_V1_CPU} && exec \"$0\" -c \"$1\"")
        script = f'echo $$ > {group}/cgroup.procs && exec unshare -C -m sh -c \'{inner}\' "$0" "$1"'
        res = subprocess.run(["sh", "-c", script, sys.executable, probe], capture_output=True, text=True, timeout=120)
        if res.returncode != 0 and not res.stdout.strip() and any(
                w in res.stderr for w in ("unshare", "mount", "cgroup.procs", "ermission")):
            pytest.skip(f"no cgroup namespace or mount here: {res.stderr.strip()[-200:]}")   # before Python ran
        assert res.returncode == 0, res.stderr[-2000:]
        affinity, workers = (int(x) for x in res.stdout.split())
        assert affinity > 1 and workers == 1
    finally:
        os.rmdir(group)   # empty again: the probe process has exited


def test_pool_is_bit_identical_to_eager_on_the_same_chunks(models, pool) -> None:
    g, reid = models
    w, images, f = loop_inputs(g, reid, 3)
    got = pool.generate(w, images, f, OPTS)
    # the split of an idle pool: [2, 1]; eager (the reference loop) on each chunk at one thread
    ref_w = torch.cat([identity_aligned_generation(w[s], images[s], f[s], g, reid, OPTS)[0]
                       for s in (slice(0, 2), slice(2, 3))])
    assert torch.equal(got.w_adv, ref_w)
    parts = [fast_generation(w[s], images[s], f[s], g, reid, OPTS) for s in (slice(0, 2), slice(2, 3))]
    assert torch.equal(got.images, torch.cat([p.images for p in parts]))
    assert torch.equal(got.embeddings, torch.cat([p.embeddings for p in parts]))
    assert len(got.trace.distance) == OPTS.steps + 1
    assert got.trace.distance[0] == parts[0].trace.distance[0] + parts[1].trace.distance[0]
    assert not torch.equal(got.w_adv, w), "the loop moved nothing"


def test_step_options_travel_with_every_batch(models, pool) -> None:
    g, reid = models
    w, images, f = loop_inputs(g, reid, 2, seed=2)
    one = pool.generate(w, images, f, replace(OPTS, steps=1))
    two = pool.generate(w, images, f, replace(OPTS, steps=2))
    assert len(one.trace.distance) == 2 and len(two.trace.distance) == 3
    assert not torch.equal(one.w_adv, two.w_adv)


def test_protector_with_workers_equals_in_process_chunks(models) -> None:
    g, reid = models
    w, images, f = loop_inputs(g, reid, 4, seed=3)
    rng = np.random.default_rng(0)
    lat = np.repeat(w.numpy()[:, None], 3, axis=1) + rng.normal(0, 0.05, (4, 3, *w.shape[1:])).astype(np.float32)
    got = Retrieved(lat, np.ones((4, 3), np.float32), np.arange(12).reshape(4, 3), "v")
    cfg = ProtectorConfig(m=3, steps=2, coarse_step=0.02, fine_step=0.05, device="cpu")
    serial = Protector(g, reid, cfg, "cpu")
    parallel = Protector(g, reid, replace(cfg, workers=2), "cpu")
    try:
        assert serial.pool is None and parallel.pool is not None and parallel.pool.workers == 2
        res = parallel.protect(images, got, f)
        parts = [serial.protect(images[s], Retrieved(lat[s], got.scores[s], got.ids[s], "v"), f[s])
                 for s in (slice(0, 2), slice(2, 4))]
    finally:
        parallel.close()
    assert torch.equal(res.w_adv, torch.cat([p.w_adv for p in parts]))
    assert torch.equal(res.images, torch.cat([p.images for p in parts]))
    assert set(res.timings_ms) >= {"augment", "generate", "total"}
    # the eager path never uses the workers
    assert Protector(g, reid, replace(cfg, workers=2, fast_path=False), "cpu").pool is None


def test_a_dead_worker_fails_its_batch_and_fresh_workers_take_over(models) -> None:
    g, reid = models
    w, images, f = loop_inputs(g, reid, 2, seed=4)
    p = GenerationPool(g, reid, workers=2)
    try:
        p.start()
        assert len(p.pids()) == 2
        victim = p.pids()[0]   # a real worker process, killed as the kernel's OOM killer would
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="worker process died"):
            for _ in range(50):   # the executor notices the death at its next look; until then batches pass
                p.generate(w, images, f, OPTS)
        assert p.restarts == 1 and p.pids() == []
        again = p.generate(w, images, f, OPTS)   # fresh workers
        assert len(p.pids()) == 2 and victim not in p.pids()
        assert again.w_adv.shape == w.shape and torch.isfinite(again.images).all()
    finally:
        p.close()


def test_workers_leave_when_their_parent_is_killed() -> None:
    """A pool owner killed by SIGKILL (out of memory, a test's timeout) never closes its pool: the workers go anyway."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from nets import tiny_stylegan3\n"
            "from latent_rag_ros.core.parallel import GenerationPool\n"
            "from latent_rag_ros.models.reid import load_reid\n"
            "p = GenerationPool(tiny_stylegan3(), load_reid('deepsort_mobilenetv2', input_size=(64, 32)), workers=2)\n"
            "p.start()\n"
            "print(*p.pids(), flush=True)\n"
            "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(x) for x in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(running(p) for p in pids)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 30
        while any(running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(p) for p in pids), "orphaned protection workers outlived their parent"
    finally:
        owner.kill()
        for p in pids:
            if running(p):
                os.kill(p, signal.SIGKILL)


def test_bench_protect_measures_the_workers_path_against_eager_on_its_chunks(capsys) -> None:
    """A tiny bench run (demo G, T=2, two crops, two workers): the workers row is exact on the same chunks."""
    import json

    from latent_rag_ros.cli import main

    assert main(["bench", "protect", "--generator", "demo", "--batch-sizes", "2", "--repeats", "1", "--threads", "1",
                 "--set", "protector.steps=2", "--set", "protector.m=2", "--variants", "workers",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    dev = next(r for r in rows if r.get("path") == "workers" and "deviation" in r)
    assert dev["same_chunks"]["max_abs_dw"] == 0.0 and dev["same_chunks"]["ssim_min"] == 1.0
    timed = next(r for r in rows if r.get("path") == "workers" and "ms_per_crop" in r)
    assert timed["ms_per_crop"] > 0 and "render" not in timed["stages_ms_per_crop"]   # rendered in the workers
    assert "on the same chunks at one thread" in out and "where they are exact" in out
    assert "| demo | 2 | workers |" in out
