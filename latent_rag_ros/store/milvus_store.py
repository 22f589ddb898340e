"""The store on Milvus (``pymilvus``): a Milvus cluster URI, or a Milvus Lite ``*.db`` file.

Two collections: ``<collection>`` holds one row per entry (``id`` INT64 primary key, ``vector``
FLOAT_VECTOR[D], ``latent`` FLOAT_VECTOR or FLOAT16_VECTOR[num_ws*w_dim] so W+ codes travel with
their identity vectors, ``label`` and ``name`` VARCHAR(1024), ``crc`` = CRC32 of the row's stored
bytes); ``<collection>_meta`` holds one row with the store manifest as JSON (dims, latent dtype,
built_with, uuid, sequence number, next id).

Durability: ``add`` first advances the manifest (reserving the ids and the new sequence number),
then inserts the rows, then (Milvus Lite, or ``flush_on_add=True``) flushes. A crash between the
two leaves unused ids, never reused ones. On a cluster an acknowledged insert is already in
Milvus's own write-ahead log, so no flush is needed there (flushing per add would make tiny
segments). This backend assumes one writing client per collection (the store node).

Search: IP on normalised vectors (cosine) over a FLAT index on Milvus Lite (exact; the only
choice that is exact there) and HNSW (M=32, efConstruction=200, ef=max(128, k)) on a cluster,
overridable with ``index_type``/``index_params``/``search_params``. Milvus caps ``k`` at 16384;
larger ``k`` are answered by an exact scan over all vectors on the client.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
import uuid as uuidlib
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from latent_rag_ros.store.base import (
    MAX_TEXT_BYTES,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    VectorStore,
    check_dims,
    check_ids,
    check_k,
    normalize_vectors,
    to_latent_dtype,
)

LOG = logging.getLogger(__name__)
FORMAT = "latent_rag_ros.store.milvus"
SCHEMA_VERSION = 1
MILVUS_MAX_TOPK = 16384
_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_BATCH = 1000


class _DropLiteTsWarning(logging.Filter):
    """Milvus Lite has no server-side iterator timestamps; pymilvus warns on every iterator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_DropLiteTsWarning())


def _client(uri: str, token: str, timeout: float) -> Any:
    with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        from pymilvus import MilvusClient  # lazy: pymilvus (optional extra), only for a Milvus store

        # Milvus Lite starts a server process per .db file and the first connection can race its
        # start on a busy machine (seen once in a full test run); a cluster can drop a connection.
        for attempt in range(3):
            try:
                return MilvusClient(uri=uri, token=token, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises many kinds; report one clearly
                if attempt == 2:
                    raise StoreError(f"{uri}: cannot connect to Milvus after 3 tries ({exc})") from None
                time.sleep(1.0 + attempt)


def row_crc(vector: np.ndarray, latent_bytes: bytes, label: str, name: str) -> int:
    """CRC32 of what one row stores (vector float32 bytes, latent bytes, label, name)."""
    c = zlib.crc32(np.ascontiguousarray(vector, dtype="<f4").tobytes())
    c = zlib.crc32(latent_bytes, c)
    return zlib.crc32(label.encode("utf-8") + b"\0" + name.encode("utf-8"), c)


class MilvusStore(VectorStore):
    """Vector store in a Milvus collection (see the module docstring)."""

    @classmethod
    def open(
        cls,
        uri: str,
        create: bool = False,
        dim: int | None = None,
        num_ws: int | None = None,
        w_dim: int | None = 512,
        built_with: dict[str, str] | None = None,
        collection: str = "latent_rag",
        latent_dtype: str = "float32",
        token: str = "",
        timeout: float = 60.0,
        **opts: Any,
    ) -> MilvusStore:
        """Connect, and create the collections when missing and ``create`` is set."""
        if not collection.isidentifier():
            raise ValueError(f"collection must be a plain identifier, got {collection!r}")
        client = _client(uri, token, timeout)
        try:
            meta_name = f"{collection}_meta"
            if not client.has_collection(meta_name, timeout=timeout):
                if not create:
                    raise StoreNotFoundError(f"{uri}: no store collection {collection!r}; open it with create=True")
                cls._create(client, collection, dim, num_ws, w_dim, built_with, latent_dtype, uri, timeout, opts)
            return cls(client, uri, collection, timeout, **opts)
        except BaseException:
            client.close()
            raise

    @staticmethod
    def _create(client: Any, collection: str, dim: Any, num_ws: Any, w_dim: Any, built_with: dict | None,
                latent_dtype: str, uri: str, timeout: float, opts: dict[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient  # lazy: pymilvus (optional extra), Milvus only

        dim, num_ws, w_dim = check_dims(dim, num_ws, w_dim)
        if latent_dtype not in _DTYPES:
            raise ValueError(f"latent_dtype must be one of {sorted(_DTYPES)}, got {latent_dtype!r}")
        if num_ws * w_dim > 32768:
            raise ValueError(f"Milvus vector fields hold at most 32768 values; W+ {num_ws}x{w_dim} is larger")
        lite = not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        lat_type = DataType.FLOAT16_VECTOR if latent_dtype == "float16" else DataType.FLOAT_VECTOR
        schema.add_field("latent", lat_type, dim=num_ws * w_dim)
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("name", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("crc", DataType.INT64)
        ip = client.prepare_index_params()
        itype = opts.get("index_type") or ("FLAT" if lite else "HNSW")
        iparams = opts.get("index_params") or ({} if itype == "FLAT" else {"M": 32, "efConstruction": 200})
        ip.add_index("vector", index_type=itype, metric_type="IP", params=iparams)
        ip.add_index("latent", index_type="FLAT", metric_type="L2")  # never searched; Milvus needs one
        client.create_collection(collection, schema=schema, index_params=ip, consistency_level="Strong",
                                 timeout=timeout)
        meta_schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        meta_schema.add_field("id", DataType.INT64, is_primary=True)
        meta_schema.add_field("manifest", DataType.VARCHAR, max_length=65535)
        meta_schema.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # every collection needs a vector
        mip = client.prepare_index_params()
        mip.add_index("dummy", index_type="FLAT", metric_type="L2")
        manifest = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "store_uuid": str(uuidlib.uuid4()),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "dim": dim,
            "num_ws": num_ws, "w_dim": w_dim, "latent_dtype": latent_dtype, "metric": "cosine",
            "built_with": dict(built_with or {}), "seq": 0, "next_id": 0,
            "index_type": itype, "index_params": iparams,
        }
        client.create_collection(f"{collection}_meta", schema=meta_schema, index_params=mip,
                                 consistency_level="Strong", timeout=timeout)
        client.insert(f"{collection}_meta", [{"id": 0, "manifest": json.dumps(manifest), "dummy": [0.0, 0.0]}],
                      timeout=timeout)
        client.flush(f"{collection}_meta", timeout=timeout)

    def __init__(self, client: Any, uri: str, collection: str, timeout: float = 60.0,
                 flush_on_add: bool | None = None, search_params: dict[str, Any] | None = None,
                 **_ignored: Any) -> None:
        self._client = client
        self.uri = uri
        self.collection = collection
        self._meta_name = f"{collection}_meta"
        self._timeout = timeout
        self._lite = not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))
        self._flush = self._lite if flush_on_add is None else bool(flush_on_add)
        self._lock = threading.RLock()
        self._closed = False
        self._names: set[str] | None = None
        m = self._read_manifest()
        try:
            self._m = m
            self._dim, self._num_ws, self._w_dim = int(m["dim"]), int(m["num_ws"]), int(m["w_dim"])
            self._dtype = _DTYPES[m["latent_dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptError(f"{uri}#{self._meta_name}", f"manifest has invalid fields ({exc})") from None
        if not client.has_collection(collection, timeout=timeout):
            raise StoreCorruptError(f"{uri}#{collection}", "data collection is missing (manifest exists)")
        self._search_params = search_params
        client.load_collection(collection, timeout=timeout)

    # ------------------------------------------------------------------ manifest
    def _read_manifest(self) -> dict[str, Any]:
        where = f"{self.uri}#{self._meta_name}"
        rows = self._client.query(self._meta_name, ids=[0], output_fields=["manifest"], timeout=self._timeout)
        if not rows:
            raise StoreCorruptError(where, "manifest row is missing")
        try:
            m = json.loads(rows[0]["manifest"])
        except (json.JSONDecodeError, TypeError) as exc:
            raise StoreCorruptError(where, f"manifest is not valid JSON ({exc})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise StoreCorruptError(where, "not a latent_rag_ros store manifest")
        if int(m.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StoreError(f"{where}: store schema version {m.get('schema_version')} is not supported")
        return m

    def _write_manifest(self, m: dict[str, Any]) -> None:
        self._client.upsert(self._meta_name, [{"id": 0, "manifest": json.dumps(m), "dummy": [0.0, 0.0]}],
                            timeout=self._timeout)
        if self._flush:
            self._client.flush(self._meta_name, timeout=self._timeout)
        self._m = m

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_ws(self) -> int:
        return self._num_ws

    @property
    def w_dim(self) -> int:
        return self._w_dim

    @property
    def version(self) -> str:
        return f"{self._m['store_uuid']}:{self._m['seq']}"

    @property
    def built_with(self) -> dict[str, str]:
        return dict(self._m.get("built_with") or {})

    def __len__(self) -> int:
        with self._lock:
            self._check_open()
            res = self._client.query(self.collection, filter="", output_fields=["count(*)"], timeout=self._timeout)
            return int(res[0]["count(*)"])

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.uri}: store is closed")

    # ------------------------------------------------------------------ rows
    def _latent_bytes(self, row_value: Any) -> bytes:
        if isinstance(row_value, (list, tuple)) and len(row_value) == 1 and isinstance(row_value[0], bytes):
            return row_value[0]
        if isinstance(row_value, bytes):
            return row_value
        return np.asarray(row_value, dtype=self._dtype).tobytes()

    def _rows(self, ids: np.ndarray, fields: list[str]) -> list[dict[str, Any]]:
        """Rows of ``ids`` in order; unknown ids raise ValueError."""
        if len(ids) == 0:
            return []
        got: dict[int, dict[str, Any]] = {}
        uniq = np.unique(ids)
        for s in range(0, len(uniq), _BATCH):
            part = [int(i) for i in uniq[s: s + _BATCH]]
            for r in self._client.query(self.collection, ids=part, output_fields=fields, timeout=self._timeout):
                got[int(r["id"])] = r
        missing = [int(i) for i in uniq if int(i) not in got]
        if missing:
            raise ValueError(f"unknown or removed store ids: {missing[:5]}")
        return [got[int(i)] for i in ids]

    # ------------------------------------------------------------------ API
    def add(
        self,
        vectors: Any,
        latents: Any,
        labels: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Insert entries (ids reserved in the manifest first); flushed before return on Milvus Lite."""
        v, w32, labels, names = self.check_add(vectors, latents, labels, names)
        n = len(v)
        w = to_latent_dtype(w32, self._dtype)
        with self._lock:
            self._check_open()
            if any(names):
                known = self._known_names()
                clash = next((nm for nm in names if nm and nm in known), None)
                if clash is not None:
                    raise ValueError(f"names: {clash!r} is already in the store")
            m = dict(self._m)
            first = int(m["next_id"])
            ids = np.arange(first, first + n, dtype=np.int64)
            m["next_id"] = first + n
            m["seq"] = int(m["seq"]) + 1
            self._write_manifest(m)
            flat = w.reshape(n, -1)
            rows = []
            for i in range(n):
                lb = flat[i].tobytes()
                rows.append({"id": int(ids[i]), "vector": v[i], "latent": flat[i], "label": labels[i],
                             "name": names[i], "crc": row_crc(v[i], lb, labels[i], names[i])})
            for s in range(0, n, _BATCH):
                self._client.insert(self.collection, rows[s: s + _BATCH], timeout=self._timeout)
            if self._flush:
                self._client.flush(self.collection, timeout=self._timeout)
            if self._names is not None:
                self._names.update(nm for nm in names if nm)
            return ids

    def remove(self, ids: Any) -> None:
        """Delete entries by id (unknown ids raise ValueError, nothing is deleted then)."""
        q = np.unique(check_ids(ids))
        if len(q) == 0:
            return
        with self._lock:
            self._check_open()
            rows = self._rows(q, ["name"])
            m = dict(self._m)
            m["seq"] = int(m["seq"]) + 1
            self._write_manifest(m)
            self._client.delete(self.collection, ids=[int(i) for i in q], timeout=self._timeout)
            if self._flush:
                self._client.flush(self.collection, timeout=self._timeout)
            if self._names is not None:
                self._names.difference_update(r["name"] for r in rows)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k through Milvus (k > 16384: exact scan on the client)."""
        k = check_k(k)
        q = normalize_vectors(queries, self._dim, "queries")
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out = np.full((len(q), k), -1, dtype=np.int64)
        with self._lock:
            self._check_open()
            if k > MILVUS_MAX_TOPK:
                return self._exact_scan(q, k)
            params = dict(self._search_params or {"metric_type": "IP"})
            if self._m.get("index_type") == "HNSW" and not self._search_params:
                params["params"] = {"ef": max(128, k)}
            res = self._client.search(self.collection, data=[row for row in q], limit=k, anns_field="vector",
                                      search_params=params, output_fields=[], timeout=self._timeout)
        for b, hits in enumerate(res):
            for j, h in enumerate(hits):
                out[b, j] = int(h["id"])
                scores[b, j] = float(h["distance"])
        return scores, out

    def _exact_scan(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = [], []
        for batch in self._iterate(["vector"]):
            ids.extend(int(r["id"]) for r in batch)
            vecs.append(np.asarray([r["vector"] for r in batch], dtype=np.float32))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out = np.full((len(q), k), -1, dtype=np.int64)
        if ids:
            all_ids = np.asarray(ids, dtype=np.int64)
            sims = q @ np.concatenate(vecs).T
            kk = min(k, len(all_ids))
            order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
            out[:, :kk] = all_ids[order]
            scores[:, :kk] = np.take_along_axis(sims, order, axis=1)
        return scores, out

    def _iterate(self, fields: list[str]) -> Any:
        it = self._client.query_iterator(self.collection, batch_size=_BATCH, filter="", output_fields=fields,
                                         timeout=self._timeout)
        try:
            while True:
                batch = it.next()
                if not batch:
                    return
                yield batch
        finally:
            it.close()

    def get_latents(self, ids: Any) -> np.ndarray:
        q = check_ids(ids)
        with self._lock:
            self._check_open()
            rows = self._rows(q, ["latent"])
        out = np.empty((len(q), self._num_ws, self._w_dim), np.float32)
        for i, r in enumerate(rows):
            raw = np.frombuffer(self._latent_bytes(r["latent"]), dtype=self._dtype)
            out[i] = raw.reshape(self._num_ws, self._w_dim)
        return out

    def get_vectors(self, ids: Any) -> np.ndarray:
        q = check_ids(ids)
        with self._lock:
            self._check_open()
            rows = self._rows(q, ["vector"])
        return np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(q), self._dim)

    def get_labels(self, ids: Any) -> list[str]:
        with self._lock:
            self._check_open()
            return [str(r["label"]) for r in self._rows(check_ids(ids), ["label"])]

    def get_names(self, ids: Any) -> list[str]:
        with self._lock:
            self._check_open()
            return [str(r["name"]) for r in self._rows(check_ids(ids), ["name"])]

    def _known_names(self) -> set[str]:
        if self._names is None:  # loaded once, then kept current by add/remove (single writer)
            self._names = {str(r["name"]) for b in self._iterate(["name"]) for r in b if r["name"]}
        return self._names

    def names(self) -> set[str]:
        with self._lock:
            self._check_open()
            return set(self._known_names())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            m = self._m
            return {
                "backend": "milvus", "uri": self.uri, "collection": self.collection, "size": len(self),
                "dim": self._dim, "num_ws": self._num_ws, "w_dim": self._w_dim, "latent_dtype": m["latent_dtype"],
                "index": {"kind": m.get("index_type"), "params": m.get("index_params"), "metric": "IP"},
                "version": self.version, "built_with": self.built_with, "store_uuid": m["store_uuid"],
                "created": m["created"], "lite": self._lite,
            }

    def verify(self) -> dict[str, Any]:
        """Re-read every row and check its CRC, its field sizes and that its id was issued."""
        errors: list[str] = []
        n = 0
        with self._lock:
            self._check_open()
            m = self._read_manifest()
            for batch in self._iterate(["vector", "latent", "label", "name", "crc"]):
                for r in batch:
                    n += 1
                    vec = np.asarray(r["vector"], dtype=np.float32)
                    lat = self._latent_bytes(r["latent"])
                    if vec.shape != (self._dim,) or len(lat) != self._num_ws * self._w_dim * self._dtype.itemsize:
                        errors.append(f"{self.uri}#{self.collection}: row {r['id']} has wrong field sizes")
                    elif row_crc(vec, lat, str(r["label"]), str(r["name"])) != int(r["crc"]):
                        errors.append(f"{self.uri}#{self.collection}: row {r['id']} fails its CRC32")
                    if int(r["id"]) >= int(m["next_id"]):
                        errors.append(f"{self.uri}#{self.collection}: row {r['id']} has an id never issued")
        return {"ok": not errors, "uri": self.uri, "collection": self.collection, "size": n,
                "version": self.version, "errors": errors[:100]}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._client.close()
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                LOG.debug("closing Milvus client: %s", exc)
