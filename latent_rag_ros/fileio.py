"""File primitives every layer shares: sha256 of a file, fsync, and atomic (crash-safe) writes.

Bottom layer (docs/design.md "Layers"): standard library only. A file is published only by
``os.replace`` after its bytes were fsync'ed, and the directory is fsync'ed after the rename, so
after a crash a name refers either to the old complete file or to the new complete one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex sha256 of a file's bytes (of its first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, limit: int = 1 << 30) -> str:
    """Short sha256 (16 hex) of a file's first ``limit`` bytes: the digest in model fingerprints.

    Stores record it in ``built_with`` (``source#digest``); the format must not change.
    """
    return sha256_file(path, limit)[:16]


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, rename it over ``path``.

    ``mode``: the file's permissions (default: 0666 less the umask, as ``open`` would give).
    The temporary file is removed when ``write`` fails; the parent folder is created if missing.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600 files; give the usual permissions
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        fsync_dir(dest.parent)
    except OSError:
        pass
    return dest


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), mode)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode)


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes | memoryview],
                        mode: int = 0o644) -> dict[str, Any]:
    """Write ``chunks`` to ``path`` atomically, hashing them on the way (large store snapshots).

    The temporary file is ``NAME.tmp`` (a crash leaves at most one, overwritten next time) and a
    failing directory fsync is an error here: the store relies on the rename being durable.
    Returns ``{"name", "sha256", "bytes"}`` computed over exactly the bytes written.
    """
    dest = Path(path)
    tmp = dest.with_name(dest.name + ".tmp")
    h = hashlib.sha256()
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return {"name": dest.name, "sha256": h.hexdigest(), "bytes": size}
