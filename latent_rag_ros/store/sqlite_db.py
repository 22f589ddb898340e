"""The embedded store's SQLite file: schema, sealed rows, transactions, checkpoints (no FAISS here).

``store.sqlite`` runs in WAL mode with ``synchronous=FULL`` (a committed transaction is on disk
before ``commit`` returns) and ``secure_delete=ON`` (deleted content is overwritten with zeros).
Tables: ``meta`` (key -> JSON value), ``entries`` (id, created_at, sealed ``[label, name]``),
``vectors`` (id, sealed float32 vector) and ``latents`` (id, sealed W+ code). Every value is
sealed by the store's codec (store/crypto.py) with ``"<uuid>|<table>|<id>"`` as associated data.
SQLite errors become :class:`StoreCorruptError` (damaged file) or :class:`StoreError`, both
naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from latent_rag_ros.fileio import fsync_dir
from latent_rag_ros.store.base import StoreCorruptError, StoreError
from latent_rag_ros.store.crypto import AeadCodec, Codec, PlainCodec, SealError, load_key

FORMAT = "latent_rag_ros.store.sqlite"
SCHEMA_VERSION = 2
KEY_CHECK = b"latent_rag_ros store key check"
TABLES = {"entries": "info", "vectors": "v", "latents": "w"}
_BATCH = 500
_CORRUPT = ("malformed", "not a database", "disk image", "no such table", "file is not")
_SCHEMA = """
PRAGMA page_size=16384;
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries(id INTEGER PRIMARY KEY, created_at REAL NOT NULL, info BLOB NOT NULL);
CREATE INDEX entries_created ON entries(created_at);
CREATE TABLE vectors(id INTEGER PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE latents(id INTEGER PRIMARY KEY, w BLOB NOT NULL);
"""


class MissingRowsError(StoreCorruptError):
    """Rows the caller expected are not in the database (damage, or a removal after a read-only open)."""


def key_check(codec: Codec, uuid: str) -> str:
    """The sealed constant that tells a right key from a wrong one (hex)."""
    return codec.seal(f"{uuid}|key_check".encode(), KEY_CHECK).hex()


def create_db(path: Path, meta: dict[str, Any]) -> None:
    """Write a complete empty database at ``path`` atomically (tmp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    for p in path.parent.glob(path.name + ".tmp*"):
        p.unlink()
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.executescript(_SCHEMA)
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    finally:
        con.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class StoreDB:
    """One connection to ``store.sqlite`` with the store's codec; callers serialise access."""

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.codec: Codec = PlainCodec()
        self.uuid = ""
        self._con: sqlite3.Connection | None = None
        with self.sql("open"):
            if read_only:
                con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False, timeout=30)
            else:
                con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
                con.execute("PRAGMA journal_mode=WAL")
            self._con = con
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA secure_delete=ON")

    @property
    def con(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"{self.path}: database is closed")
        return self._con

    @contextlib.contextmanager
    def sql(self, what: str) -> Iterator[None]:
        """Turn SQLite failures into StoreCorruptError (damaged file) or StoreError naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if any(s in msg for s in _CORRUPT):
                raise StoreCorruptError(str(self.path), f"{what}: {msg}") from None
            raise StoreError(f"{self.path}: {what}: {msg}") from None

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One consistent read view for several statements, even while a writer commits."""
        with self.sql("begin"):
            self.con.execute("BEGIN")
        try:
            yield
        finally:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")

    def meta(self) -> dict[str, Any]:
        with self.sql("reading meta"):
            return {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta")}

    def open_codec(self, meta: dict[str, Any], key_file: str | os.PathLike | None, store_dir: Path) -> Codec:
        """Set up the codec the store was sealed with; missing, wrong or unexpected keys are one clear error."""
        self.uuid = str(meta["store_uuid"])
        scheme, stored_kid = meta["encryption"], meta["key_id"]
        if scheme == "none":
            if key_file:
                raise StoreError(f"{self.path}: this store is not encrypted, but a key file was given ({key_file}); "
                                 "encrypt it with `latent-rag store rekey --new-key-file KEY` or drop the key")
            codec: Codec = PlainCodec(str(meta.get("digest", "blake2b")))  # no meta.digest: made before SHA-256
        elif scheme == AeadCodec.scheme:
            if not key_file:
                raise StoreError(f"{self.path}: this store is encrypted (key id {stored_kid}); give its key file "
                                 "(store.key_file in the config, or --key-file)")
            codec = AeadCodec(load_key(key_file, store_dir))
            if codec.key_id != stored_kid:
                raise StoreError(f"{self.path}: wrong key: {key_file} has key id {codec.key_id}, this store was "
                                 f"encrypted with key id {stored_kid}")
        else:
            raise StoreError(f"{self.path}: unknown encryption scheme {scheme!r}")
        try:
            if codec.open(f"{self.uuid}|key_check".encode(), bytes.fromhex(meta["key_check"])) != KEY_CHECK:
                raise SealError("key check value differs")
        except SealError as exc:
            raise StoreError(f"{self.path}: the key check fails ({exc}): wrong key, or the meta table was "
                             "altered") from None
        self.codec = codec
        return codec

    # ------------------------------------------------------------------ sealed values
    def aad(self, table: str, id_: int) -> bytes:
        return f"{self.uuid}|{table}|{id_}".encode()

    def seal(self, table: str, id_: int, data: bytes) -> bytes:
        return self.codec.seal(self.aad(table, id_), data)

    def unseal(self, table: str, id_: int, blob: bytes) -> bytes:
        try:
            return self.codec.open(self.aad(table, id_), blob)
        except SealError as exc:
            raise StoreCorruptError(str(self.path), f"{table} row {id_}: {exc}") from None

    def entries(self) -> tuple[np.ndarray, list[str], list[str]]:
        """(ids ascending, labels, names) of every entry."""
        ids: list[int] = []
        labels: list[str] = []
        names: list[str] = []
        with self.sql("reading entries"):
            for id_, blob in self.con.execute("SELECT id, info FROM entries ORDER BY id"):
                info = self.unseal("entries", id_, blob)
                try:
                    label, name = json.loads(bytes(info))
                except (ValueError, TypeError):
                    raise StoreCorruptError(str(self.path), f"entries row {id_}: undecodable label/name") from None
                ids.append(id_)
                labels.append(str(label))
                names.append(str(name))
        return np.asarray(ids, dtype=np.int64), labels, names

    def read_rows(self, table: str, ids: np.ndarray, dtype: np.dtype, shape: tuple[int, ...],
                  out_dtype: np.dtype | None = None) -> np.ndarray:
        """Unsealed rows of ``vectors``/``latents`` for ``ids`` (in that order) as ``[len(ids), *shape]``.

        Stored as ``dtype``, returned as ``out_dtype`` (default ``dtype``): the conversion happens in
        the one copy out of SQLite's buffer, so a float16 code read as float32 is copied once, not twice.
        """
        col = TABLES[table]
        out_dtype = np.dtype(dtype if out_dtype is None else out_dtype)
        ids_l = np.asarray(ids, dtype=np.int64).tolist()
        pos = {id_: i for i, id_ in enumerate(ids_l)}
        if len(pos) != len(ids_l):  # repeated ids: read each once
            uniq, inverse = np.unique(np.asarray(ids_l, dtype=np.int64), return_inverse=True)
            return self.read_rows(table, uniq, dtype, shape, out_dtype)[inverse]
        out = np.empty((len(ids_l), *shape), dtype=out_dtype)
        if not ids_l:
            return out
        nbytes = int(np.prod(shape)) * dtype.itemsize
        con, codec, prefix = self.con, self.codec, f"{self.uuid}|{table}|"
        with self.sql(f"reading {table}"):
            if len(ids_l) <= _BATCH:  # one statement per retrieval (SQLite caches the prepared statement)
                rows: Iterator[tuple[int, bytes]] = iter(con.execute(
                    f"SELECT id, {col} FROM {table} WHERE id IN ({','.join('?' * len(ids_l))})", ids_l))
            elif len(ids_l) > 4 * _BATCH and ids_l == sorted(ids_l):
                rows = iter(con.execute(
                    f"SELECT id, {col} FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id", (ids_l[0], ids_l[-1])))
            else:
                rows = (r for s in range(0, len(ids_l), _BATCH) for r in con.execute(
                    f"SELECT id, {col} FROM {table} WHERE id IN ({','.join('?' * len(ids_l[s: s + _BATCH]))})",
                    ids_l[s: s + _BATCH]))
            found = 0
            for id_, blob in rows:
                i = pos.get(id_)
                if i is None:
                    continue
                try:  # the tag/digest of every value read is checked (AES-GCM or a digest, see crypto.py)
                    data = codec.open(f"{prefix}{id_}".encode(), blob)
                except SealError as exc:
                    raise StoreCorruptError(str(self.path), f"{table} row {id_}: {exc}") from None
                if len(data) != nbytes:
                    raise StoreCorruptError(str(self.path), f"{table} row {id_}: {len(data)} bytes, expected {nbytes}")
                out[i] = np.frombuffer(data, dtype=dtype).reshape(shape)
                found += 1
        if found != len(ids_l):
            raise MissingRowsError(str(self.path), f"{table}: {len(ids_l) - found} of the requested rows are missing")
        return out

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection committed (cache invalidation)."""
        with self.sql("data_version"):
            return int(self.con.execute("PRAGMA data_version").fetchone()[0])

    def count(self, table: str) -> int:
        with self.sql(f"counting {table}"):
            return int(self.con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # ------------------------------------------------------------------ writes
    def commit(self, what: str, statements: list[tuple[str, list[tuple[Any, ...]]]], meta: dict[str, Any]) -> None:
        """Run statements and meta updates in one IMMEDIATE transaction; durable when it returns."""
        con = self.con
        with self.sql(what):
            con.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    con.executemany(sql, rows)
                con.executemany("UPDATE meta SET value=? WHERE key=?", [(json.dumps(v), k) for k, v in meta.items()])
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                    con.execute("ROLLBACK")
                raise

    def insert(self, ids: list[int], created_at: float, infos: list[bytes], vectors: np.ndarray,
               latents: np.ndarray, meta: dict[str, Any]) -> None:
        """Seal and insert new entries (one transaction)."""
        rows = [
            ("INSERT INTO entries VALUES (?, ?, ?)",
             [(i, created_at, self.seal("entries", i, info)) for i, info in zip(ids, infos)]),
            ("INSERT INTO vectors VALUES (?, ?)",
             [(i, self.seal("vectors", i, v.tobytes())) for i, v in zip(ids, vectors)]),
            ("INSERT INTO latents VALUES (?, ?)",
             [(i, self.seal("latents", i, w.tobytes())) for i, w in zip(ids, latents)]),
        ]
        self.commit("add", rows, meta)

    def delete(self, ids: list[int], meta: dict[str, Any]) -> None:
        """Delete entries from every table (one transaction; secure_delete zeroes their content)."""
        rows = [(i,) for i in ids]
        self.commit("remove", [(f"DELETE FROM {t} WHERE id=?", rows) for t in TABLES], meta)

    def ids_older_than(self, cutoff: float) -> np.ndarray:
        with self.sql("retention"):
            return np.asarray([r[0] for r in self.con.execute(
                "SELECT id FROM entries WHERE created_at < ? ORDER BY id", (cutoff,))], dtype=np.int64)

    def created_at(self, ids: list[int]) -> dict[int, float]:
        with self.sql("reading entries"):
            return dict(self.con.execute(
                f"SELECT id, created_at FROM entries WHERE id IN ({','.join('?' * len(ids))})", ids))

    def reseal_all(self, new: Codec) -> int:
        """Re-seal every value under ``new`` and update the key record, in one transaction; returns the count."""
        con = self.con
        count = 0
        with self.sql("rekey"):
            con.execute("BEGIN IMMEDIATE")
            try:
                for table, col in TABLES.items():
                    all_ids = [r[0] for r in con.execute(f"SELECT id FROM {table} ORDER BY id")]
                    for s in range(0, len(all_ids), _BATCH):
                        part = all_ids[s: s + _BATCH]
                        rows = con.execute(f"SELECT id, {col} FROM {table} WHERE id BETWEEN ? AND ?",
                                           (part[0], part[-1])).fetchall()
                        con.executemany(f"UPDATE {table} SET {col}=? WHERE id=?",
                                        [(new.seal(self.aad(table, i), self.unseal(table, i, b)), i) for i, b in rows])
                        count += len(rows)
                upd = {"encryption": new.scheme, "key_id": new.key_id, "key_check": key_check(new, self.uuid)}
                if isinstance(new, PlainCodec):
                    upd["digest"] = new.digest
                con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in upd.items()])
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                    con.execute("ROLLBACK")
                raise
        self.codec = new
        return count

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it (old page images gone); False when a reader blocks it."""
        with self.sql("checkpoint"):
            busy, _, _ = self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def vacuum(self) -> None:
        with self.sql("vacuum"):
            self.con.execute("VACUUM")

    def integrity(self) -> list[str]:
        """``PRAGMA integrity_check`` lines (``["ok"]`` when the file is sound)."""
        with self.sql("integrity check"):
            return [r[0] for r in self.con.execute("PRAGMA integrity_check")]

    def close(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            finally:
                self._con = None
