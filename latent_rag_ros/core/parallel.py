"""Crop-parallel T-step loops on a CPU: the batch is split into chunks, each run in its own 1-thread process.

Why: on a few CPU cores the T-step loop's tensors are small (the demo's 64x32 generator, a 128x64 re-ID),
so PyTorch's intra-op threads barely help (demo, batch 8, 1 -> 2 threads: 1.28x in one run, 0.89x in another),
while independent crops on independent cores scale almost linearly (two 1-thread processes ran at the
speed of one). Processes, not threads: the loop issues thousands of small ops per crop and Python's GIL
would serialise them.

How a batch is split: over the workers that are idle when it arrives (``chunk_sizes``; at least one
chunk). One caller alone (the CLI, the evaluation) always gets every worker, so its split is a pure
function of the batch size and a run is reproducible. In the node, several frames are in flight under
load: each then runs whole in one worker, at the per-crop efficiency of its full batch (batch 8 costs
~8% less per crop than batch 4 on the demo), and an idle pool splits a frame to cut its latency.

Exactness: a worker runs ``fast_generation`` on its chunk with one intra-op thread, so each crop's result
is bit-identical to the eager loop (or the in-process fast path) run on that same chunk at one thread
(``test_parallel.py``). Like any change of batch composition or thread count, it is not bit-identical to one batch
at another thread count: at the demo's step sizes the T-step sign iteration turns such rounding changes
into different (equally protected) images (docs/perf.md, "eager is not reproducible to SSIM 0.98 itself").

The workers receive G and E once, at start (torch shares their weights through shared memory), and the
step options with every chunk, so runtime changes of T or the step sizes apply at once. No ROS here.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from latent_rag_ros.core.fastpath import FastResult, fast_generation, loss_encoder
from latent_rag_ros.core.generation import GenerationTrace, StepOptions
from latent_rag_ros.orphans import watch_parent

LOG = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}   # inside a worker process: its generator and loss encoder


def chunk_sizes(batch: int, workers: int) -> list[int]:
    """Split ``batch`` crops over at most ``workers`` chunks, sizes differing by at most one, larger first."""
    if batch < 0 or workers < 1:
        raise ValueError(f"chunk_sizes needs batch >= 0 and workers >= 1, got {batch}, {workers}")
    n = min(batch, workers)
    if n == 0:
        return []
    base, extra = divmod(batch, n)
    return [base + (i < extra) for i in range(n)]


def usable_cpus() -> int:
    """CPUs this process may use: the least of the machine's, its affinity mask and its cgroup CPU quota.

    A container's quota (docker --cpus, Kubernetes limits) is not in the affinity mask: 2 CPUs of quota on
    a 64-core host showed 64 there, and one worker per "core" would have started 64 processes on 2 CPUs.
    loky (joblib's process pool) reads all three; ``LOKY_MAX_CPU_COUNT`` caps it further.
    """
    from loky import cpu_count  # lazy: only where the CPU path asks for "one per core"

    return max(1, int(cpu_count()))


def resolve_workers(setting: int, device: torch.device) -> int:
    """``protector.workers``: N as given; 0 = one per CPU this process may use (``usable_cpus``; 1 on a GPU)."""
    if setting < 0:
        raise ValueError(f"protector.workers must be >= 0 (0 = one per CPU core), got {setting}")
    if device.type != "cpu":
        return 1   # one GPU is not shared better by several processes
    if setting == 0:
        return usable_cpus()
    return setting


def _init_worker(generator: torch.nn.Module, reid: torch.nn.Module, fast_reid: str, threads: int,
                 parent: int) -> None:
    """Worker start: one intra-op thread, its own loss encoder, one tiny loop so the first chunk is not slow.

    Ctrl-C reaches the whole process group: the worker ignores it and leaves when its parent closes the pool,
    or when the parent dies (a worker blocked on the executor's queue would not notice: it holds that
    queue's write end itself), so a shutdown does not print a traceback per worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent(parent, lambda: os._exit(0))   # a chunk in flight has nobody to return to
    torch.set_num_threads(threads)
    g = _STATE["generator"] = generator.eval().requires_grad_(False)
    e = _STATE["reid"] = loss_encoder(reid.eval().requires_grad_(False), fast_reid)
    img = torch.full((1, 3, int(g.img_height), int(g.img_width)), 0.5)
    w = g.w_avg.detach().float().reshape(1, 1, -1).repeat(1, g.num_ws, 1)
    with torch.no_grad():
        identity = torch.nn.functional.normalize(e(img), dim=1)
    fast_generation(w, img, identity, g, e, StepOptions(steps=1))


def _run_chunk(w_star: torch.Tensor, images: torch.Tensor, identity: torch.Tensor, opts: StepOptions,
               batched_backward: bool) -> tuple[torch.Tensor, list, list, torch.Tensor, torch.Tensor]:
    """One chunk's T-step loop in a worker; plain tensors and lists back (cheap to send)."""
    res = fast_generation(w_star, images, identity, _STATE["generator"], _STATE["reid"], opts, batched_backward)
    return res.w_adv, res.trace.distance, res.trace.id_loss, res.images, res.embeddings


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Spawned workers must not run the parent's ``__main__`` script again.

    multiprocessing's spawn re-executes the main script in every child unless ``__main__`` was imported by
    module name; console scripts without an ``if __name__ == "__main__"`` guard (as some installers write
    them, ``ros2 run``'s among them) would then start a second CLI or node in each worker. What a worker
    runs lives in this module, and G and E are instances of importable classes (the package's, or the
    user's modules; not classes defined in a ``__main__`` script), so the main script is marked as one that
    spawn skips, only while the workers are started.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


def _ping() -> int:
    """A worker's pid, once its initialiser (and warm-up) has run."""
    return os.getpid()


class GenerationPool:
    """``workers`` processes running ``fast_generation`` on chunks of a batch; thread-safe, started lazily.

    ``generate`` has the contract of ``fast_generation``. A worker that dies (killed, out of memory) fails
    the batches it held with RuntimeError, and the next call starts fresh workers: nothing half-done is
    returned.
    """

    def __init__(self, generator: torch.nn.Module, reid: torch.nn.Module, workers: int, fast_reid: str = "off",
                 threads_per_worker: int = 1, batched_backward: bool = False) -> None:
        if workers < 1 or threads_per_worker < 1:
            raise ValueError(f"GenerationPool needs workers >= 1 and threads_per_worker >= 1, got {workers}, "
                             f"{threads_per_worker}")
        self.workers, self.threads = int(workers), int(threads_per_worker)
        self._args = (generator, reid, fast_reid, self.threads)
        self.batched_backward = batched_backward
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._busy = 0   # chunks submitted and not finished
        self.restarts = 0

    def start(self) -> None:
        """Start the worker processes now (and wait until each is up and warm) instead of on the first batch."""
        self._pool()

    def _pool(self) -> ProcessPoolExecutor:
        """The executor, with all its workers started (they start only here, so ``_main_not_rerun`` covers them)."""
        with self._lock:
            if self._executor is not None:
                return self._executor
            # spawn: a fork of a process that runs DDS and torch threads is not safe
            ctx = torch.multiprocessing.get_context("spawn")
            ex = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(*self._args, os.getpid()))
            try:
                with _main_not_rerun():
                    pings = [ex.submit(_ping) for _ in range(self.workers)]   # N at once: N processes
                pids = {f.result() for f in pings}
            except BrokenProcessPool as exc:
                ex.shutdown(wait=False, cancel_futures=True)
                raise RuntimeError(f"protection worker processes did not start: {exc}") from exc
            LOG.info("%d protection worker processes up: %s", len(pids), sorted(pids))
            weakref.finalize(self, ex.shutdown, wait=False, cancel_futures=True)   # a dropped pool stops its workers
            self._executor = ex
            return ex

    def pids(self) -> list[int]:
        """Process ids of the running workers (empty before the pool starts)."""
        with self._lock:
            ex = self._executor
        procs = getattr(ex, "_processes", None) or {}   # the executor keeps no public list of its processes
        return sorted(procs)

    def _broken(self, ex: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is ex:
                self._executor = None
                self.restarts += 1
        ex.shutdown(wait=False, cancel_futures=True)

    def generate(self, w_star: torch.Tensor, images: torch.Tensor, identity: torch.Tensor,
                 opts: StepOptions) -> FastResult:
        """w*_adv, trace, images and embeddings of the whole batch, its chunks run in parallel (module docstring)."""
        if w_star.device.type != "cpu":
            raise ValueError("GenerationPool runs on CPU tensors only")
        ex = self._pool()
        futures: list[Future] = []
        with self._lock:
            sizes = chunk_sizes(len(w_star), max(1, self.workers - self._busy))
            self._busy += len(sizes)
        start = 0
        try:
            for n in sizes:
                sl = slice(start, start + n)
                start += n
                futures.append(ex.submit(_run_chunk, w_star[sl].contiguous(), images[sl].contiguous(),
                                         identity[sl].contiguous(), opts, self.batched_backward))
            parts = [f.result() for f in futures]
        except BrokenProcessPool as exc:
            self._broken(ex)
            raise RuntimeError(f"a protection worker process died ({exc}); fresh workers start with the next "
                               "batch") from exc
        finally:
            for f in futures:
                f.cancel()
            with self._lock:
                self._busy -= len(sizes)
        if not parts:
            raise ValueError("GenerationPool.generate got an empty batch")
        steps = len(parts[0][1])
        trace = GenerationTrace([[x for p in parts for x in p[1][t]] for t in range(steps)],
                                [[x for p in parts for x in p[2][t]] for t in range(steps)])
        return FastResult(torch.cat([p[0] for p in parts]), trace, torch.cat([p[3] for p in parts]),
                          torch.cat([p[4] for p in parts]))

    def close(self) -> None:
        """Stop the workers (pending chunks are cancelled)."""
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
