"""Crash-safe file primitives for the store directory (the index snapshot): atomic writes, fsync.

A file is published only by ``rename`` after its bytes were fsync'ed, and the directory is
fsync'ed after the rename, so after a crash a name refers either to the old complete file or to
the new complete file, never to a torn one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
