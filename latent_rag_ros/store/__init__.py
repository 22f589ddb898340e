"""Trusted vector store: identity vectors (cosine search) paired with W+ codes (docs/design.md, store/).

``open_store`` picks the backend: a local directory is the embedded FAISS store
(:mod:`latent_rag_ros.store.faiss_store`); a Milvus URI (``http(s)://``, ``tcp://``, ``grpc://``,
``unix:``) or a Milvus Lite file (``*.db``) is the Milvus store
(:mod:`latent_rag_ros.store.milvus_store`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from latent_rag_ros.store.base import (
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreNotFoundError,
    VectorStore,
    check_expected,
)
from latent_rag_ros.store.faiss_store import DB_NAME, LEGACY_MANIFEST, FaissStore
from latent_rag_ros.store.milvus_store import MilvusStore

LOG = logging.getLogger(__name__)
_MILVUS_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
BACKENDS = ("auto", "faiss", "milvus")   # what ``backend=`` accepts (``auto``: chosen from the location)

__all__ = ["BACKENDS", "StoreCorruptError", "StoreError", "StoreMismatchError", "StoreNotFoundError", "VectorStore",
           "open_store", "resolve_backend"]


def resolve_backend(path_or_uri: str | os.PathLike, backend: str = "auto") -> str:
    """``faiss`` or ``milvus`` for a location (``auto``: URIs and ``*.db`` files are Milvus)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'faiss' or 'milvus', got {backend!r}")
    if backend != "auto":
        return backend
    s = str(path_or_uri)
    return "milvus" if s.startswith(_MILVUS_SCHEMES) or s.endswith(".db") else "faiss"


def open_store(
    path_or_uri: str | os.PathLike,
    create: bool = False,
    dim: int | None = None,
    num_ws: int | None = None,
    w_dim: int | None = 512,
    built_with: dict[str, str] | None = None,
    backend: str = "auto",
    **opts: Any,
) -> VectorStore:
    """Open (or with ``create=True`` create when missing) a store and check it is the expected one.

    ``dim``, ``num_ws`` / ``w_dim`` and ``built_with`` are both the shape of a new store and the
    expectations for an existing one: a difference raises :class:`StoreMismatchError` (``w_dim`` is
    compared together with ``num_ws``; ``built_with`` keys the caller names must match). FAISS
    options: ``read_only``, ``verify`` (``full``/``size``), ``latent_dtype`` (new stores:
    ``float32``/``float16``), ``index`` (see store/ann.py ``IndexParams``), ``key_file`` (encryption
    at rest, store/crypto.py), ``snapshot_min``, ``purge_fraction``, ``clock``, ``latent_cache``
    (how many verified W+ codes stay in memory, store/code_cache.py).
    Milvus options: ``collection``, ``latent_dtype``, ``token``,
    ``flush_on_add``, ``index_type``, ``index_params``, ``search_params``.
    """
    kind = resolve_backend(path_or_uri, backend)
    if kind == "milvus":
        store: VectorStore = MilvusStore.open(str(path_or_uri), create=create, dim=dim, num_ws=num_ws,
                                              w_dim=w_dim, built_with=built_with, **opts)
    else:
        root = Path(path_or_uri).expanduser()
        if (root / DB_NAME).exists() or (root / LEGACY_MANIFEST).exists() or not create:
            opts.pop("latent_dtype", None)
            store = FaissStore(root, **opts)  # StoreNotFoundError / the old-format error when not a store
        else:
            return FaissStore.create(root, dim, num_ws, w_dim, built_with=built_with, **opts)
    try:
        check_expected(str(path_or_uri), store.info(), dim, num_ws, w_dim, built_with)
    except StoreMismatchError:
        store.close()
        raise
    return store
