"""Append-only write-ahead log of the FAISS store: framed, CRC-checked, fsync'ed records.

Layout (little-endian). File header, 40 bytes: magic ``LRAGWAL1``, store uuid (16 bytes),
``base_seq`` u64 (sequence number of the snapshot it follows), u32 zero, crc32 of the first 36
bytes. Then records, each a 16-byte frame header (``u32 magic``, ``u32 payload length``,
``u32 crc32(payload)``, ``u32 crc32(first 12 header bytes)``) followed by the payload:
``u8 kind, 3 pad, u32 n, u64 seq`` then, for ADD, ``int64 ids[n]``, ``float32 vectors[n*D]``,
``latents[n*L*C]`` (the store's latent dtype) and UTF-8 JSON ``[[label, name], ...]``; for
REMOVE, ``int64 ids[n]``.

Written by hand because no maintained Python library offers a small embedded append log with
per-record checksums and torn-tail detection (sqlite would hide the framing this format needs
for memory-friendly latent reads by offset).

Reading: a frame cut short at the end of the file, or a last frame whose bytes do not match
their CRC, or an all-zero tail, is a torn append (a crash mid-write, never acknowledged because
``append`` returns only after fsync) and is dropped. A bad frame with valid data after it is
corruption: :class:`StoreCorruptError` naming the file, nothing is dropped silently.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import uuid as uuidlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent_rag_ros.store.base import StoreCorruptError
from latent_rag_ros.store.files import atomic_write, write_all

FILE_MAGIC = b"LRAGWAL1"
FILE_HEADER = struct.Struct("<8s16sQI")  # magic, uuid, base_seq, reserved; + u32 crc
FILE_HEADER_SIZE = FILE_HEADER.size + 4
FRAME_MAGIC = 0x4C524543  # "CERL"
FRAME = struct.Struct("<IIII")  # magic, length, crc(payload), crc(first 12 bytes)
PAYLOAD_HEAD = struct.Struct("<B3xIQ")  # kind, n, seq
ADD, REMOVE = 1, 2


@dataclass
class WalRecord:
    """One decoded log record. For ADD, latents stay in the file: ``latent_offset`` locates row 0."""

    kind: int
    seq: int
    ids: np.ndarray
    offset: int
    vectors: np.ndarray | None = None
    latent_offset: int = 0
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class WalScan:
    """Result of reading a log: its header fields, the good records, where they end, torn bytes."""

    store_uuid: str
    base_seq: int
    records: list[WalRecord]
    good_end: int
    torn_bytes: int
    size: int


def create_wal(path: Path, store_uuid: str, base_seq: int) -> None:
    """Atomically (re)create an empty log following the snapshot with sequence ``base_seq``."""
    head = FILE_HEADER.pack(FILE_MAGIC, uuidlib.UUID(store_uuid).bytes, int(base_seq), 0)
    atomic_write(path, [head + struct.pack("<I", zlib.crc32(head))])


def encode_add(seq: int, ids: np.ndarray, vectors: np.ndarray, latents: np.ndarray,
               labels: list[str], names: list[str]) -> bytes:
    """Frame an ADD record (latents already in the store's dtype)."""
    meta = json.dumps([[a, b] for a, b in zip(labels, names)], ensure_ascii=False).encode("utf-8")
    payload = b"".join([
        PAYLOAD_HEAD.pack(ADD, len(ids), seq),
        np.ascontiguousarray(ids, dtype="<i8").tobytes(),
        np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
        np.ascontiguousarray(latents).tobytes(),
        meta,
    ])
    return _frame(payload)


def encode_remove(seq: int, ids: np.ndarray) -> bytes:
    """Frame a REMOVE record."""
    return _frame(PAYLOAD_HEAD.pack(REMOVE, len(ids), seq) + np.ascontiguousarray(ids, dtype="<i8").tobytes())


def _frame(payload: bytes) -> bytes:
    head = struct.pack("<III", FRAME_MAGIC, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def add_latent_offset(record_offset: int, n: int, dim: int) -> int:
    """File offset of the first latent row of an ADD record that starts at ``record_offset``."""
    return record_offset + FRAME.size + PAYLOAD_HEAD.size + 8 * n + 4 * n * dim


class WalWriter:
    """Appends framed records; ``append`` returns only after the bytes are fsync'ed."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.size = size
        if os.fstat(self.fd).st_size != size:  # drop a torn tail before appending after it
            os.ftruncate(self.fd, size)
            os.fsync(self.fd)

    def append(self, frame: bytes) -> int:
        """Write one framed record at the end and fsync it; returns the record's file offset.

        On any write error the file is cut back to its previous length and the error re-raised,
        so a failed append leaves the log as it was.
        """
        offset = self.size
        try:
            os.lseek(self.fd, offset, os.SEEK_SET)
            write_all(self.fd, frame)
            os.fdatasync(self.fd)
        except BaseException:
            try:
                os.ftruncate(self.fd, offset)
                os.fsync(self.fd)
            except OSError:
                pass
            raise
        self.size = offset + len(frame)
        return offset

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def scan_wal(path: Path, dim: int, latent_row_bytes: int, fd: int | None = None) -> WalScan:
    """Read and check every record of a log (see the module docstring for the torn-tail rule).

    ``fd``: read this open descriptor of ``path`` (it is not closed) instead of opening the path.
    """
    try:
        fh = open(os.dup(fd), "rb") if fd is not None else open(path, "rb")
    except FileNotFoundError:
        raise StoreCorruptError(str(path), "write-ahead log is missing (acknowledged entries may be lost)") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < FILE_HEADER_SIZE:
            raise StoreCorruptError(str(path), f"write-ahead log header is truncated ({size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            head = mm[:FILE_HEADER.size]
            (crc,) = struct.unpack_from("<I", mm, FILE_HEADER.size)
            magic, uid, base_seq, _ = FILE_HEADER.unpack(head)
            if magic != FILE_MAGIC or zlib.crc32(head) != crc:
                raise StoreCorruptError(str(path), "not a write-ahead log of this store format (bad header)")
            records: list[WalRecord] = []
            pos = FILE_HEADER_SIZE
            torn = 0
            while pos < size:
                rest = size - pos
                if rest < FRAME.size:
                    torn = rest
                    break
                magic_r, length, pcrc, hcrc = FRAME.unpack_from(mm, pos)
                if magic_r != FRAME_MAGIC or zlib.crc32(mm[pos: pos + 12]) != hcrc:
                    if not any(mm[pos:size]):  # zero-filled tail of an interrupted append
                        torn = rest
                        break
                    raise StoreCorruptError(str(path), f"bad record header at byte {pos} with data after it")
                end = pos + FRAME.size + length
                if end > size:
                    torn = rest
                    break
                payload = memoryview(mm)[pos + FRAME.size: end]
                try:
                    ok = zlib.crc32(payload) == pcrc
                    if ok:
                        records.append(_decode(payload, pos, dim, latent_row_bytes, path))
                finally:
                    payload.release()
                if not ok:
                    if end == size:
                        torn = rest
                        break
                    raise StoreCorruptError(str(path), f"record at byte {pos} fails its CRC32 with data after it")
                pos = end
    return WalScan(str(uuidlib.UUID(bytes=uid)), base_seq, records, pos, torn, size)


def _decode(payload: memoryview, offset: int, dim: int, latent_row_bytes: int, path: Path) -> WalRecord:
    if len(payload) < PAYLOAD_HEAD.size:
        raise StoreCorruptError(str(path), f"record at byte {offset} is too short")
    kind, n, seq = PAYLOAD_HEAD.unpack_from(payload, 0)
    p = PAYLOAD_HEAD.size
    if kind == REMOVE:
        if len(payload) != p + 8 * n:
            raise StoreCorruptError(str(path), f"remove record at byte {offset} has the wrong length")
        ids = np.frombuffer(payload, dtype="<i8", count=n, offset=p).astype(np.int64)
        return WalRecord(REMOVE, seq, ids, offset)
    if kind != ADD:
        raise StoreCorruptError(str(path), f"record at byte {offset} has unknown kind {kind}")
    fixed = p + 8 * n + 4 * n * dim + n * latent_row_bytes
    if len(payload) < fixed:
        raise StoreCorruptError(str(path), f"add record at byte {offset} is shorter than its {n} entries "
                                "(store dimensions differ from the log's)")
    ids = np.frombuffer(payload, dtype="<i8", count=n, offset=p).astype(np.int64)
    vectors = np.frombuffer(payload, dtype="<f4", count=n * dim, offset=p + 8 * n).reshape(n, dim).copy()
    try:
        meta = json.loads(bytes(payload[fixed:]).decode("utf-8"))
        labels = [str(m[0]) for m in meta]
        names = [str(m[1]) for m in meta]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, IndexError) as exc:
        raise StoreCorruptError(str(path), f"add record at byte {offset} has unreadable labels ({exc})") from None
    if len(labels) != n:
        raise StoreCorruptError(str(path), f"add record at byte {offset} has {len(labels)} labels for {n} entries")
    return WalRecord(ADD, seq, ids, offset, vectors, add_latent_offset(offset, n, dim), labels, names)
