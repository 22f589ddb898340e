"""SIGKILL a writing process at random moments: every acknowledged entry survives, exactly.

The writer (test/store_crash_writer.py) prints each id only after ``add`` returned, and each
removal only after ``remove`` returned; its purge threshold is low so kills also land inside
purges (index rebuild, snapshot, VACUUM). After every kill the store must open (SQLite recovers
its WAL), pass ``verify`` and hold exactly what was acknowledged (entries in flight at the kill
may or may not be there, but if there, intact).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from store_crash_writer import DIM, C, L, entry

from latent_rag_ros.store import open_store

WRITER = Path(__file__).with_name("store_crash_writer.py")
REPO = Path(__file__).resolve().parent.parent
KILLS = 20


def _run_and_kill(path: Path, tag: str, seed: int, delay: float) -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path), tag, str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY"):
                ready.set()
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(60):
        proc.kill()
        raise AssertionError(f"writer never became ready: {proc.communicate()[1][-2000:]}")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, f"writer died on its own ({proc.returncode}): {err[-2000:]}"
    return lines, err


def _wal_pending(path: Path) -> bool:
    """True when the kill left committed or torn frames in the SQLite WAL (recovery is exercised)."""
    wal = path / "store.sqlite-wal"
    return wal.exists() and wal.stat().st_size > 0


def _check(path: Path, acked: dict[int, str], removed: set[int], in_flight: set[int]) -> int:
    s = open_store(path, read_only=True, verify="full")
    try:
        report = s.verify()
        assert report["ok"], report
        live = s.ids()
        must = set(acked) - removed - in_flight
        missing = must - set(live.tolist())
        assert not missing, f"acknowledged entries lost: {sorted(missing)[:10]}"
        assert not (removed & set(live.tolist())), "acknowledged removals came back"
        names = s.get_names(live)
        vecs, lats, labels = s.get_vectors(live), s.get_latents(live), s.get_labels(live)
        for i, (id_, name) in enumerate(zip(live.tolist(), names)):
            if id_ in acked:
                assert acked[id_] == name
            v, w, label = entry(name)
            ref = (v / np.linalg.norm(v.astype(np.float64))).astype(np.float32)
            np.testing.assert_allclose(vecs[i], ref, atol=1e-6, err_msg=name)
            np.testing.assert_array_equal(lats[i], w, err_msg=name)
            assert labels[i] == label
        _, hits = s.search(vecs[:5], 1)  # the index agrees with the stored vectors
        assert hits[:, 0].tolist() == live[:5].tolist()
        return len(live)
    finally:
        s.close()


def test_sigkill_never_loses_acknowledged_entries(tmp_path: Path) -> None:
    path = tmp_path / "store"
    open_store(path, create=True, dim=DIM, num_ws=L, w_dim=C).close()
    rng = random.Random(20240611)
    acked: dict[int, str] = {}
    removed: set[int] = set()
    in_flight: set[int] = set()  # removals started but not acknowledged: either outcome is correct
    sizes = []
    in_recovery = 0
    for run in range(KILLS):
        lines, _ = _run_and_kill(path, f"r{run}", run, rng.uniform(0.02, 0.35))
        in_recovery += _wal_pending(path)
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "A":
                acked[int(parts[1])] = parts[2]
            elif len(parts) == 2 and parts[0] == "r":
                in_flight.add(int(parts[1]))
            elif len(parts) == 2 and parts[0] == "R":
                removed.add(int(parts[1]))
                in_flight.discard(int(parts[1]))
        sizes.append(_check(path, acked, removed, in_flight))
    assert len(acked) > 5 * KILLS, f"writers acknowledged only {len(acked)} entries"
    assert removed, "no removal was exercised"
    # kills leave a WAL to recover; none in 20 would mean the test lost its bite
    assert in_recovery >= 1, "no kill left a WAL to recover"
    # a final writable open finishes any interrupted step; compaction keeps everything
    s = open_store(path)
    s.compact(purge=True)
    assert s.verify()["ok"]
    s.close()
    assert _check(path, acked, removed, in_flight) == sizes[-1]
