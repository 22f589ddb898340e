"""Crash-safe file primitives for the store directory: atomic writes, fsync, checksums.

A file is published only by ``rename`` after its bytes were fsync'ed, and the directory is
fsync'ed after the rename, so after a crash a name refers either to the old complete file or to
the new complete file, never to a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.store.base import StoreCorruptError

_CHUNK = 8 << 20


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and new names inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a single write may be short)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> dict[str, Any]:
    """Write ``chunks`` to ``path`` atomically (tmp, fsync, rename, fsync dir).

    Returns ``{"name", "sha256", "bytes"}`` computed over exactly the bytes written.
    """
    tmp = path.with_name(path.name + ".tmp")
    h = hashlib.sha256()
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in chunks:
            mv = memoryview(chunk).cast("B")
            h.update(mv)
            size += mv.nbytes
            write_all(fd, mv)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return {"name": path.name, "sha256": h.hexdigest(), "bytes": size}


def array_chunks(arr: np.ndarray, rows_per_chunk: int | None = None) -> Iterable[memoryview]:
    """Yield a C-contiguous array's bytes in pieces of about 8 MiB (memmaps are never copied whole)."""
    if arr.size == 0:
        return
    flat_rows = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    row_bytes = max(1, flat_rows.shape[1] * arr.itemsize)
    step = rows_per_chunk or max(1, _CHUNK // row_bytes)
    for s in range(0, arr.shape[0], step):
        yield memoryview(np.ascontiguousarray(flat_rows[s: s + step])).cast("B")


def atomic_write_json(path: Path, obj: Any) -> dict[str, Any]:
    """Atomically write ``obj`` as UTF-8 JSON."""
    data = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return atomic_write(path, [data])


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a whole file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def check_file(directory: Path, rec: dict[str, Any], what: str, full: bool = True) -> Path:
    """Verify a snapshot file against its manifest record (size, and sha256 when ``full``).

    Raises StoreCorruptError naming the file when it is missing, truncated or altered.
    """
    path = directory / rec["name"]
    if not path.is_file():
        raise StoreCorruptError(str(path), f"{what} file is missing (listed in manifest.json)")
    size = path.stat().st_size
    if size != int(rec["bytes"]):
        raise StoreCorruptError(str(path), f"{what} file has {size} bytes, manifest.json records {rec['bytes']} "
                                "(truncated or overwritten)")
    if full:
        digest = sha256_file(path)
        if digest != rec["sha256"]:
            raise StoreCorruptError(str(path), f"{what} file fails its sha256 checksum "
                                    f"({digest[:12]}... != {rec['sha256'][:12]}...)")
    return path


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises StoreCorruptError naming it."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise StoreCorruptError(str(path), f"{what} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(str(path), f"{what} is not valid JSON ({exc})") from None
