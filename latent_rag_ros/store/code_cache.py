"""A bounded LRU of verified W+ codes, so hot entries skip SQLite and their tag/digest check.

Why: a retrieval reads m codes of ~14 KiB each; through SQLite that is a page copy and an
AES-GCM tag or SHA-256 digest per code (docs/NOTES.md, "Fifth session"). A code enters the cache
only after its row was read from SQLite and its tag/digest checked, as float32 (as served, so a hit
is a plain copy: 0.034 ms for 10 codes of 14x512 vs 0.084 ms when kept as float16).

Erasure: :meth:`CodeCache.drop` (called by ``remove``/``expire``) and :meth:`CodeCache.clear`
(rekey, close, another connection's commit) overwrite the cached array with zeros before letting it
go, and LRU eviction overwrites the evicted code's buffer with the new code, so a removed entry's
code stays in no cache buffer (test_store_code_cache.py).
Ids are never reused by the store, so an id names one row version for the cache's lifetime.

Admission on the second read: a code is copied in only when its id was read before (the ids of the
last ``4 * capacity`` misses are remembered, ids only). Independent queries then pay no copies
(measured: copying every miss cost ~11% of ``get_latents`` at 6% hits), while an entry retrieved
again is cached on its second read and served from memory from the third.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np


class CodeCache:
    """LRU id -> verified code (``capacity`` codes; 0 disables it); callers hold the store lock."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"latent_cache must be >= 0 codes, got {capacity}")
        self.capacity = int(capacity)
        self._codes: OrderedDict[int, np.ndarray] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()  # ids of recent misses (no codes)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._codes)

    def __contains__(self, id_: int) -> bool:
        return id_ in self._codes

    def get(self, id_: int) -> np.ndarray | None:
        """The cached code of ``id_`` (now most recently used), or None."""
        code = self._codes.get(id_)
        if code is None:
            self.misses += 1
            return None
        self._codes.move_to_end(id_)
        self.hits += 1
        return code

    def put(self, id_: int, code: np.ndarray) -> None:
        """Keep a private copy of ``code`` if ``id_`` was read before (else remember the id only); when
        full, the copy overwrites the least recently used code's buffer (one write, no zeroing)."""
        if not self.capacity:
            return
        if id_ not in self._seen:  # first read: remember the id, copy nothing
            self._seen[id_] = None
            if len(self._seen) > 4 * self.capacity:
                self._seen.popitem(last=False)
            return
        self.drop([id_])
        if len(self._codes) >= self.capacity:
            _, buf = self._codes.popitem(last=False)
            if buf.shape == code.shape and buf.dtype == code.dtype:
                buf[...] = code
            else:
                buf.fill(0)
                buf = np.array(code, copy=True)
        else:
            buf = np.array(code, copy=True)
        self._codes[id_] = buf

    def drop(self, ids: Iterable[int]) -> None:
        """Zero and forget the codes of ``ids`` (erasure)."""
        for id_ in ids:
            self._seen.pop(int(id_), None)
            code = self._codes.pop(int(id_), None)
            if code is not None:
                code.fill(0)

    def clear(self) -> None:
        """Zero and forget every code."""
        for code in self._codes.values():
            code.fill(0)
        self._codes.clear()
        self._seen.clear()

    def stats(self) -> dict[str, int]:
        return {"capacity": self.capacity, "codes": len(self._codes), "hits": self.hits, "misses": self.misses}
