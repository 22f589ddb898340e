"""Helper process for test_store_crash.py: adds (and sometimes removes) entries until it is killed.

Usage: ``python store_crash_writer.py STORE RUN_TAG SEED [remove]``. With ``remove`` it only
removes live entries, one at a time (test_store_erasure.py). After each ``add`` returns it prints
``A <id> <name>``; before each ``remove`` it prints ``r <id>`` and after it returns ``R <id>``,
flushing every line, so the parent
knows exactly what was acknowledged. Entry contents are a pure function of the name
(:func:`entry`), so the parent can check every entry it finds after the crash.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np

DIM, L, C = 16, 3, 8


def entry(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(vector [DIM], latent [L, C], label) of the entry called ``name``."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    vec = rng.standard_normal(DIM).astype(np.float32) + 0.1
    lat = rng.standard_normal((L, C)).astype(np.float32)
    return vec, lat, f"p{zlib.crc32(name.encode()) % 7}"


def remove_all(path: str) -> None:
    """Remove live entries one by one, printing ``r <id>`` before and ``R <id>`` after each."""
    from latent_rag_ros.store import open_store

    store = open_store(path)
    print("READY", flush=True)
    for victim in store.ids().tolist():
        print(f"r {victim}", flush=True)
        store.remove([victim])
        print(f"R {victim}", flush=True)


def main(path: str, tag: str, seed: int) -> None:
    from latent_rag_ros.store import open_store

    rng = np.random.default_rng(seed)
    # a small purge threshold so that kills also land inside purges (index rebuild, VACUUM)
    store = open_store(path, purge_fraction=0.1)
    print("READY", flush=True)
    acked: list[int] = []
    i = 0
    while True:
        if acked and rng.random() < 0.15:
            victim = acked.pop(int(rng.integers(len(acked))))
            print(f"r {victim}", flush=True)  # intent: after a kill here the removal may or may not be durable
            store.remove([victim])
            print(f"R {victim}", flush=True)
            continue
        n = int(rng.integers(1, 5))
        names = [f"{tag}-{i + j}" for j in range(n)]
        i += n
        parts = [entry(nm) for nm in names]
        ids = store.add(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
                        [p[2] for p in parts], names)
        for id_, nm in zip(ids.tolist(), names):
            print(f"A {id_} {nm}", flush=True)
        acked.extend(ids.tolist())


if __name__ == "__main__":
    if sys.argv[4:] == ["remove"]:
        remove_all(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
