"""The FAISS index snapshot: a derived, sealed copy of the in-memory index (``index.snap``).

SQLite is the store's only source of truth; the snapshot only saves rebuilding the HNSW graph on
open (at 1M entries a rebuild takes minutes). It holds a header (store uuid, the sequence number
and key id it was written under, index tuning), the slot ids, and ``faiss.serialize_index`` bytes,
each sealed by the store's codec (AES-GCM when the store is encrypted, so vectors never sit in
clear next to encrypted rows) in chunks of ``CHUNK`` bytes, framed as ``u64 length || sealed``.
The associated data binds every chunk to the store, its position and whether it is the last, so
a truncated, reordered or foreign snapshot fails to open. It is written atomically (tmp, fsync,
rename, fsync dir). A snapshot that fails to open is reported and rebuilt from SQLite.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.fileio import atomic_write_chunks
from latent_rag_ros.store.crypto import Codec, SealError

MAGIC = b"LRRSNAP1"
CHUNK = 64 << 20
_LEN = struct.Struct("<Q")


def _aad(uuid: str, i: int, last: bool) -> bytes:
    return f"{uuid}|snapshot|{i}|{'last' if last else 'more'}".encode()


def write_snapshot(path: Path, codec: Codec, uuid: str, header: dict[str, Any], slot_ids: np.ndarray,
                   index_bytes: np.ndarray) -> int:
    """Write the sealed snapshot atomically; returns its size in bytes."""
    raw = memoryview(np.ascontiguousarray(index_bytes, dtype=np.uint8)).cast("B")
    parts: list[bytes | memoryview] = [json.dumps(header).encode(), np.ascontiguousarray(slot_ids, "<i8").tobytes()]
    parts += [raw[s: s + CHUNK] for s in range(0, len(raw), CHUNK)] or [b""]

    def chunks() -> Iterator[bytes]:
        yield MAGIC
        for i, part in enumerate(parts):
            sealed = codec.seal(_aad(uuid, i, i == len(parts) - 1), bytes(part))
            yield _LEN.pack(len(sealed))
            yield sealed

    return int(atomic_write_chunks(path, chunks())["bytes"])


def read_snapshot(path: Path, codec: Codec, uuid: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(header, slot ids, index bytes) of a snapshot; SealError/ValueError when it does not open."""
    parts: list[bytes | memoryview] = []
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a store snapshot (bad magic)")
        size = os.fstat(f.fileno()).st_size
        while True:
            head = f.read(_LEN.size)
            if not head:
                raise ValueError("truncated (no last chunk)")
            (n,) = _LEN.unpack(head)
            if n > size:
                raise ValueError("chunk length beyond the end of the file")
            blob = f.read(n)
            i = len(parts)
            last = f.tell() == size
            try:
                parts.append(codec.open(_aad(uuid, i, last), blob))
            except SealError:
                if last:
                    raise
                parts.append(codec.open(_aad(uuid, i, True), blob))  # raises unless a stray tail follows
                raise ValueError("bytes after the last chunk") from None
            if last:
                break
    if len(parts) < 3:
        raise ValueError("snapshot has too few chunks")
    header = json.loads(bytes(parts[0]))
    ids = np.frombuffer(parts[1], dtype="<i8").astype(np.int64)
    body = np.frombuffer(b"".join(parts[2:]), dtype=np.uint8)
    return header, ids, body
