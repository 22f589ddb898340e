"""Identity-guided latent code retrieval (paper section III-B, eq. 1-2).

Cosine top-m over the store's identity vectors, never returning the query's own entry: it is left
out by id when the caller knows it, and by an exact-duplicate guard (cosine >= 1 - tol) when it does
not. Optionally every entry sharing the query's identity label is left out too (stronger privacy
than the paper). Works against any object with the ``VectorStore`` search API (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class RetrievalError(ValueError):
    """The store cannot serve the request (too few eligible entries, bad query, ...)."""


@dataclass
class Retrieved:
    """W_m of eq. 2 for a batch: latents [B, m, L, C], cosine scores [B, m], ids [B, m]."""

    latents: np.ndarray
    scores: np.ndarray
    ids: np.ndarray
    version: str


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row (eq. 1 divides by the norms); zero rows raise RetrievalError."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise RetrievalError("identity vector has zero norm")
    return (x / norms).astype(np.float32)


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """Validate a query batch: [B, dim] (or [dim]), finite; returns float32 [B, dim]."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise RetrievalError(f"identity vector must have length {dim}, got shape {tuple(np.shape(queries))}")
    if q.shape[0] == 0:
        raise RetrievalError("empty query batch")
    if not np.all(np.isfinite(q)):
        raise RetrievalError("identity vector contains NaN or inf")
    return q


def _select(
    scores: np.ndarray,
    ids: np.ndarray,
    m: int,
    exclude_id: int | None,
    banned: set[int],
    duplicate_tol: float,
) -> tuple[list[int], list[float]]:
    keep_ids: list[int] = []
    keep_scores: list[float] = []
    for s, i in zip(scores.tolist(), ids.tolist()):
        if i < 0 or i == exclude_id or i in banned or s >= 1.0 - duplicate_tol:
            continue
        keep_ids.append(int(i))
        keep_scores.append(float(s))
        if len(keep_ids) == m:
            break
    return keep_ids, keep_scores


def retrieve(
    store: Any,
    queries: Any,
    m: int,
    exclude_ids: Sequence[int | None] | None = None,
    exclude_labels: Sequence[str | None] | None = None,
    duplicate_tol: float = 1e-6,
) -> Retrieved:
    """Top-m identity-similar W+ codes for each query (eq. 1-2), excluding the query's own entry.

    ``exclude_ids[b]``: the query's own store id (or None); ``exclude_labels[b]``: drop every entry
    with this label (or None). Raises RetrievalError when fewer than m entries are eligible.
    """
    if m < 1:
        raise RetrievalError(f"m must be >= 1, got {m}")
    n = len(store)
    q = normalize_rows(check_queries(queries, store.dim))
    b = q.shape[0]
    exclude_ids = list(exclude_ids) if exclude_ids is not None else [None] * b
    exclude_labels = list(exclude_labels) if exclude_labels is not None else [None] * b
    if len(exclude_ids) != b or len(exclude_labels) != b:
        raise RetrievalError("exclude_ids / exclude_labels must have one entry per query")
    if m > n:
        raise RetrievalError(f"m={m} is larger than the store ({n} entries)")

    out_ids = np.full((b, m), -1, dtype=np.int64)
    out_scores = np.zeros((b, m), dtype=np.float32)
    k = min(n, 2 * m + 1)
    pending = list(range(b))
    while pending:
        scores, ids = store.search(q[pending], k)
        still: list[int] = []
        for row, qi in enumerate(pending):
            banned: set[int] = set()
            label = exclude_labels[qi]
            if label:
                valid = ids[row][ids[row] >= 0]
                banned = {int(i) for i, lab in zip(valid.tolist(), store.get_labels(valid)) if lab == label}
            keep, ks = _select(scores[row], ids[row], m, exclude_ids[qi], banned, duplicate_tol)
            if len(keep) == m:
                out_ids[qi] = keep
                out_scores[qi] = ks
            elif k >= n:
                raise RetrievalError(f"only {len(keep)} eligible entries for m={m} after exclusions (store has {n})")
            else:
                still.append(qi)
        pending = still
        k = min(n, k * 4)

    latents = store.get_latents(out_ids.reshape(-1))
    latents = np.asarray(latents, dtype=np.float32).reshape(b, m, *latents.shape[1:])
    return Retrieved(latents=latents, scores=out_scores, ids=out_ids, version=str(store.version))
