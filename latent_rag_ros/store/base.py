"""The vector store contract (docs/design.md, store/) shared by the FAISS and Milvus backends.

A store holds, per entry, an L2-normalised identity vector ``[D]`` (searched by cosine), the W+
code ``[num_ws, w_dim]`` computed from the same reference image, an identity ``label`` and a
unique ``name`` (the build tool's resume key). This module also holds the input checks every
backend applies, so both reject bad inputs with the same messages.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MAX_TEXT_BYTES = 1024
"""Longest label or name (UTF-8 bytes); Milvus VARCHAR fields are declared with this length."""


class StoreError(RuntimeError):
    """Base class of every store failure that is not a plain invalid argument."""


class StoreNotFoundError(StoreError):
    """No store exists at the given location (and ``create`` was not asked for)."""


class StoreMismatchError(StoreError):
    """The store was built for another identity dimension, W+ shape or generator/encoder."""


class StoreCorruptError(StoreError):
    """A store file is truncated, fails its checksum or is otherwise unreadable; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class VectorStore(abc.ABC):
    """Identity vectors searched by cosine similarity, each paired with its W+ latent code."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Length D of the identity vectors."""

    @property
    @abc.abstractmethod
    def num_ws(self) -> int:
        """Number of W+ layers L of each latent code."""

    @property
    @abc.abstractmethod
    def w_dim(self) -> int:
        """Width C of each W+ layer."""

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """``"<store uuid>:<sequence number>"``; changes on every add or remove."""

    @property
    @abc.abstractmethod
    def built_with(self) -> dict[str, str]:
        """Model fingerprint the store was built with (generator, reid, latent_encoder sources + digests)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of live entries."""

    @abc.abstractmethod
    def add(
        self,
        vectors: Any,
        latents: Any,
        labels: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Add ``n`` entries (vectors ``[n,D]``, latents ``[n,L,C]``); durable before it returns.

        Returns the new int64 ids. ``labels`` are identity labels (``""`` when unknown);
        ``names`` are unique sample keys (``""`` when not given).
        """

    @abc.abstractmethod
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarity for each query ``[B,D]``: (scores ``[B,k]`` float32, ids int64).

        Rows are padded with id -1 and score -inf when the store holds fewer than ``k`` entries.
        """

    @abc.abstractmethod
    def get_latents(self, ids: Any) -> np.ndarray:
        """W+ codes ``[k,L,C]`` float32 of the given ids (in order)."""

    @abc.abstractmethod
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Normalised identity vectors ``[k,D]`` float32 of the given ids (in order)."""

    @abc.abstractmethod
    def get_labels(self, ids: Any) -> list[str]:
        """Identity labels of the given ids (in order)."""

    @abc.abstractmethod
    def get_names(self, ids: Any) -> list[str]:
        """Sample names of the given ids (in order)."""

    @abc.abstractmethod
    def names(self) -> set[str]:
        """Every non-empty sample name in the store (the build tool skips these on resume)."""

    @abc.abstractmethod
    def remove(self, ids: Any) -> None:
        """Remove entries by id; durable before it returns. Unknown ids raise ValueError."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Size, dimensions, index kind, version, built_with and backend details."""

    @abc.abstractmethod
    def verify(self) -> dict[str, Any]:
        """Re-check every checksum; returns a report with ``ok`` and a list of ``errors``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files, locks and connections (idempotent)."""

    def check_add(
        self, vectors: Any, latents: Any, labels: Sequence[str] | None, names: Sequence[str] | None
    ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """The checks every backend's ``add`` applies: (unit vectors, float32 latents, labels, names)."""
        v = normalize_vectors(vectors, self.dim)
        n = len(v)
        w = check_latents(latents, n, self.num_ws, self.w_dim)
        labels_l = check_texts(labels, n, "labels")
        names_l = check_texts(names, n, "names")
        dup = first_duplicate(names_l)
        if dup:
            raise ValueError(f"names: {dup!r} appears twice in one add")
        return v, w, labels_l, names_l

    def expire(self, max_age_s: float, now: float | None = None) -> np.ndarray:
        """Remove entries older than ``max_age_s`` (retention); backends without timestamps refuse."""
        raise NotImplementedError(f"{type(self).__name__} does not record when entries were added; "
                                  "retention needs the embedded (FAISS/SQLite) store")

    def info(self) -> dict[str, Any]:
        """Shape and model fingerprint: what ``open_store`` compares with the caller's expectations."""
        return {"dim": self.dim, "num_ws": self.num_ws, "w_dim": self.w_dim, "built_with": self.built_with}

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- input validation


def check_dims(dim: Any, num_ws: Any, w_dim: Any) -> tuple[int, int, int]:
    """Validate the three shape parameters of a new store."""
    out = []
    for name, v in (("dim", dim), ("num_ws", num_ws), ("w_dim", w_dim)):
        if v is None or isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name} must be a positive integer to create a store, got {v!r}")
        out.append(int(v))
    return out[0], out[1], out[2]


def normalize_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """Check ``[n,dim]`` (or ``[dim]``), finite, non-zero; return L2-normalised float32 ``[n,dim]``."""
    try:
        v = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a numeric array ({exc})") from None
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{what}: expected shape [n, {dim}], got {tuple(np.shape(vectors))}")
    if v.shape[0] == 0:
        raise ValueError(f"{what}: empty batch")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: contains NaN or inf")
    norms = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what}: row {int(np.argmin(norms[:, 0]))} has zero norm (cosine undefined)")
    return np.ascontiguousarray(v / norms, dtype=np.float32)


def check_latents(latents: Any, n: int, num_ws: int, w_dim: int) -> np.ndarray:
    """Check W+ codes are finite ``[n,num_ws,w_dim]``; return them as contiguous float32."""
    try:
        w = np.asarray(latents, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"latents: not a numeric array ({exc})") from None
    if w.shape != (n, num_ws, w_dim):
        raise ValueError(f"latents: expected shape [{n}, {num_ws}, {w_dim}], got {tuple(np.shape(latents))}")
    if not np.all(np.isfinite(w)):
        raise ValueError("latents: contains NaN or inf")
    return np.ascontiguousarray(w)


def to_latent_dtype(latents: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast checked W+ codes to the store's dtype; values a float16 store cannot hold raise ValueError."""
    if dtype.itemsize == 2 and latents.size and float(np.abs(latents).max()) > float(np.finfo(np.float16).max):
        raise ValueError("latents: values exceed the float16 range of this store (|x| > 65504)")
    return np.ascontiguousarray(latents, dtype=dtype)


def check_texts(values: Sequence[str] | None, n: int, what: str) -> list[str]:
    """Check ``n`` strings of at most MAX_TEXT_BYTES UTF-8 bytes (None -> ``n`` empty strings)."""
    if values is None:
        return [""] * n
    if isinstance(values, str):
        raise ValueError(f"{what}: expected a list of {n} strings, got one string")
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{what}: expected {n} strings, got {len(out)}")
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise ValueError(f"{what}[{i}]: expected str, got {type(s).__name__}")
        if len(s.encode("utf-8")) > MAX_TEXT_BYTES:
            raise ValueError(f"{what}[{i}]: longer than {MAX_TEXT_BYTES} UTF-8 bytes")
    return out


def check_k(k: Any) -> int:
    """``k`` must be a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_ids(ids: Any) -> np.ndarray:
    """Ids as a flat int64 array (a scalar becomes one id)."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ids: not an array of integers ({exc})") from None
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"ids: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def same_model(a: str, b: str) -> bool:
    """Whether two model fingerprints (``source#digest`` or plain names) name the same weights.

    When both carry a ``#digest`` only the digests are compared, so a store built on one machine
    accepts the same model file at another path on the trusted server or the robot.
    """
    if "#" in a and "#" in b:
        return a.rsplit("#", 1)[1] == b.rsplit("#", 1)[1]
    return a == b


def model_mismatch(built_with: dict[str, Any], client: dict[str, str], where: str = "store") -> str:
    """Why a store built with ``built_with`` must not serve a client using ``client`` models ("" if it may).

    Only the keys both sides name are compared (generator, reid, ...): a store built before models
    were recorded cannot be checked and is served (the W+ shape is still checked by the protector).
    """
    for key, theirs in client.items():
        ours = (built_with or {}).get(key)
        if theirs and ours and not same_model(str(ours), str(theirs)):
            return (f"{where} was built for {key} {ours!r}; the client uses {theirs!r}: rebuild the store for this "
                    "model (latent-rag build-store) or point the client at its own store")
    return ""


def check_expected(
    where: str,
    have: dict[str, Any],
    dim: int | None,
    num_ws: int | None,
    w_dim: int | None,
    built_with: dict[str, str] | None,
) -> None:
    """Raise StoreMismatchError when the store differs from what the caller expects.

    ``dim`` is checked when given; ``num_ws`` and ``w_dim`` together when ``num_ws`` is given;
    every key of ``built_with`` must be recorded in the store with the same value (keys the
    caller does not name are not compared).
    """
    problems = []
    if dim is not None and int(dim) != have["dim"]:
        problems.append(f"identity dim {have['dim']} (expected {dim})")
    if num_ws is not None and (int(num_ws), int(w_dim or have["w_dim"])) != (have["num_ws"], have["w_dim"]):
        problems.append(f"W+ shape {have['num_ws']}x{have['w_dim']} (expected {num_ws}x{w_dim})")
    stored = have.get("built_with") or {}
    for key, value in (built_with or {}).items():
        if key not in stored:
            problems.append(f"no record of {key!r} (expected {value!r})")
        elif not same_model(str(stored[key]), str(value)):
            problems.append(f"{key} {stored[key]!r} (expected {value!r})")
    if problems:
        raise StoreMismatchError(f"{where}: store was built for " + "; ".join(problems))


def first_duplicate(items: Iterable[str]) -> str | None:
    """The first non-empty string that occurs twice, or None."""
    seen: set[str] = set()
    for s in items:
        if s and s in seen:
            return s
        seen.add(s)
    return None
