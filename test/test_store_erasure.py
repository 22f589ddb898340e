"""Erasure (issue 15.1): a removed person's bytes are in no store file, and removal survives SIGKILL.

The scan reads every file in the store directory (``store.sqlite``, its ``-wal``/``-shm``, the
index snapshot, the audit trail) and looks for the exact bytes the store kept of each removed
entry: its normalised float32 vector and its W+ code. The same scan must find a kept entry's
bytes, so it cannot pass by looking in the wrong place.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from store_crash_writer import DIM, C, L, entry

from latent_rag_ros.cli.store import register
from latent_rag_ros.store import open_store
from latent_rag_ros.store.faiss_store import FaissStore

WRITER = Path(__file__).with_name("store_crash_writer.py")
REPO = Path(__file__).resolve().parent.parent
D, LL, CC = 64, 3, 16


def _files_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def _found(root: Path, needles: list[bytes]) -> list[tuple[str, int]]:
    """(file, needle index) for every needle present in any store file."""
    return [(name, i) for name, data in _files_bytes(root).items() for i, nd in enumerate(needles) if nd in data]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, sub.add_parser("bench").add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _build(root: Path, n: int = 600) -> FaissStore:
    rng = np.random.default_rng(3)
    s = FaissStore.create(root, D, LL, CC, index={"exact_max": 200})  # HNSW, so a snapshot file exists
    s.add(rng.standard_normal((n, D)), rng.standard_normal((n, LL, CC)), [f"person{i % 10}" for i in range(n)],
          [f"img{i}.png" for i in range(n)])
    s.compact()
    assert (root / "index.snap").exists()
    return s


def _needles(s: FaissStore, ids: np.ndarray) -> list[bytes]:
    vec, lat = s.get_vectors(ids), s.get_latents(ids)
    return [vec[i].tobytes() for i in range(len(ids))] + [lat[i].tobytes() for i in range(len(ids))]


def test_remove_leaves_no_bytes_while_the_store_stays_open(tmp_path: Path) -> None:
    root = tmp_path / "s"
    s = _build(root)
    gone = s.ids_with_label("person3")
    kept = s.ids_with_label("person4")[:5]
    gone_b, kept_b = _needles(s, gone), _needles(s, kept)
    assert len(_found(root, gone_b)) >= len(gone_b)  # before: every removed value is on disk
    s.remove(gone)
    assert not _found(root, gone_b), "removed bytes still on disk"
    assert {i for _, i in _found(root, kept_b)} == set(range(len(kept_b)))  # the scan does find stored values
    q = np.frombuffer(gone_b[0], np.float32)[None]
    _, hit = s.search(q, 20)
    assert not set(hit[0].tolist()) & set(gone.tolist())
    s.close()
    s = FaissStore(root)
    assert len(s) == 540 and not set(s.ids().tolist()) & set(gone.tolist())
    assert s.verify()["ok"]
    s.close()
    assert not _found(root, gone_b)


def test_cli_remove_by_label_and_id_is_audited(tmp_path: Path) -> None:
    root = tmp_path / "s"
    s = _build(root)
    gone = s.ids_with_label("person7")
    gone_b = _needles(s, gone)
    other = int(s.ids_with_label("person1")[0])
    other_b = _needles(s, np.asarray([other]))
    s.close()
    assert _cli(["store", "remove", str(root), "--label", "person7"]) == 0
    assert _cli(["store", "remove", str(root), "--id", str(other)]) == 0
    assert _cli(["store", "remove", str(root), "--label", "nobody"]) == 1
    assert not _found(root, gone_b + other_b)
    with open_store(root) as s2:
        assert len(s2) == 600 - len(gone) - 1
    lines = (root / "audit.log").read_text().splitlines()
    assert len(lines) == 2 and '"action":"remove"' in lines[0] and str(int(gone[0])) in lines[0]
    assert _cli(["store", "audit", "verify", str(root)]) == 0


def _kill_remover(path: Path, delay: float, min_acked: int = 2) -> list[str]:
    """Start the remover, wait until it acknowledged ``min_acked`` removals, then SIGKILL it ``delay`` s later."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path), "x", "0", "remove"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    acked = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY"):
                ready.set()
            lines.append(line)
            if sum(x.startswith("R ") for x in lines) >= min_acked:
                acked.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert ready.wait(60), proc.communicate()[1][-2000:]
    assert acked.wait(120), "the remover acknowledged no removal"  # progress, however busy the machine
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    assert proc.returncode == -signal.SIGKILL
    return lines


def test_acknowledged_removal_survives_sigkill_and_leaves_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "store"
    s = open_store(path, create=True, dim=DIM, num_ws=L, w_dim=C)
    names = [f"e{i}" for i in range(400)]
    parts = [entry(nm) for nm in names]
    s.add(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), [p[2] for p in parts], names)
    needles = {int(i): b for i, b in zip(s.ids(), (s.get_latents(s.ids())))}
    s.close()
    removed: set[int] = set()
    for run in range(5):
        lines = _kill_remover(path, 0.01 * run)
        removed |= {int(x.split()[1]) for x in lines if x.startswith("R ")}
        with open_store(path) as s:  # a writable open finishes any interrupted erasure
            live = set(s.ids().tolist())
        assert not removed & live, "an acknowledged removal came back"
        assert not _found(path, [needles[i].tobytes() for i in removed]), "bytes of removed entries on disk"
        assert _found(path, [needles[i].tobytes() for i in sorted(live)[:3]])  # kept entries are still there
    assert len(removed) >= 5, f"only {len(removed)} removals acknowledged before the kills"
