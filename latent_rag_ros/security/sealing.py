"""AEAD-sealed requests and replies between robots/admins and the trusted store (AES-256-GCM).

A request carries, in the clear, only: the protocol version, the key id, a timestamp and a 96-bit
random nonce. Its content (identity vector, m, ...) is sealed with the key's secret; the associated
data binds the protocol, the operation, the key id, the timestamp and the nonce, so none of them
can be changed without the tag failing. The store (:class:`Gate`) refuses unknown or revoked keys,
bad tags, timestamps outside ``max_skew_s`` and nonces it has already seen within the window. A
reply is sealed with the same key under a fresh nonce and bound to the request's nonce, so a reply
cannot be swapped for another or replayed as a request.
"""

from __future__ import annotations

import heapq
import json
import math
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from latent_rag_ros.security.keys import Key, KeyRing

PROTOCOL_VERSION = 2          # 1 was the unauthenticated, plaintext service (before issue 11)
NONCE_BYTES = 12
OPERATIONS = ("retrieve", "add", "remove")
_DTYPES = {"float32": np.float32, "int64": np.int64, "uint32": np.uint32}
_MAX_HEADER = 1 << 16


class RefusedError(Exception):
    """A request or reply the link does not accept. ``reason`` is a short code, ``detail`` is for logs only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def pack(meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """Plaintext payload: a length-prefixed JSON header (meta + array specs) then the raw array bytes."""
    arrays = arrays or {}
    specs, blobs = [], []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        dt = next((k for k, v in _DTYPES.items() if a.dtype == v), None)
        if dt is None:
            raise ValueError(f"array {name!r}: dtype {a.dtype} not one of {', '.join(_DTYPES)}")
        specs.append([name, dt, [int(s) for s in a.shape]])
        blobs.append(a.tobytes())
    header = json.dumps({"meta": meta, "arrays": specs}, separators=(",", ":")).encode()
    return struct.pack("<I", len(header)) + header + b"".join(blobs)


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`pack`; strict (sizes, dtypes, shapes), raises ValueError on anything else."""
    if len(data) < 4:
        raise ValueError("payload too short")
    (n,) = struct.unpack_from("<I", data)
    if n > _MAX_HEADER or 4 + n > len(data):
        raise ValueError("payload header length out of range")
    head = json.loads(data[4:4 + n].decode())
    if not isinstance(head, dict) or not isinstance(head.get("meta"), dict) or not isinstance(head.get("arrays"), list):
        raise ValueError("payload header malformed")
    pos, arrays = 4 + n, {}
    for spec in head["arrays"]:
        name, dt, shape = spec
        if dt not in _DTYPES or not isinstance(shape, list) or any(not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"payload array {name!r}: bad spec")
        dtype = np.dtype(_DTYPES[dt])
        size = math.prod(shape) * dtype.itemsize   # Python ints: no overflow on hostile shapes
        if pos + size > len(data):
            raise ValueError(f"payload array {name!r}: truncated")
        arrays[str(name)] = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=pos).reshape(shape)
        pos += size
    if pos != len(data):
        raise ValueError("payload has trailing bytes")
    return head["meta"], arrays


def _ad(direction: str, operation: str, protocol: int, key_id: str, stamp_ns: int, nonce: bytes,
        request_nonce: bytes = b"") -> bytes:
    """Associated data: every clear-text field, length-prefixed so no two field lists encode alike."""
    parts = [b"latent-rag-link", direction.encode(), operation.encode(), str(int(protocol)).encode(),
             key_id.encode(), str(int(stamp_ns)).encode(), bytes(nonce), bytes(request_nonce)]
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


@dataclass(frozen=True)
class SealedRequest:
    """The clear-text envelope of a request (what goes into the service request's fields)."""

    protocol: int
    key_id: str
    stamp_ns: int
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True)
class Opened:
    """An authenticated request: who sent it and what it asked."""

    key: Key
    operation: str
    nonce: bytes
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


class ClientSealer:
    """A robot's or administrator's side of the link: seal requests, open replies."""

    def __init__(self, key: Key) -> None:
        if not key.valid:
            raise ValueError(f"key {key.key_id!r} is revoked or has no secret ({key.path})")
        self.key = key
        self._aead = AESGCM(key.secret)

    def seal(self, operation: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
             stamp_ns: int | None = None) -> SealedRequest:
        """Seal one request for ``operation`` (retrieve/add/remove) with a fresh nonce and the current time."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation {operation!r} unknown")
        stamp = time.time_ns() if stamp_ns is None else int(stamp_ns)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ad = _ad("request", operation, PROTOCOL_VERSION, self.key.key_id, stamp, nonce)
        return SealedRequest(PROTOCOL_VERSION, self.key.key_id, stamp, nonce,
                             self._aead.encrypt(nonce, pack(meta, arrays), ad))

    def open_reply(self, operation: str, request: SealedRequest, protocol: int, nonce: bytes,
                   sealed: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Authenticate and decrypt the reply to ``request``; raises :class:`RefusedError` if it does not verify."""
        if int(protocol) != PROTOCOL_VERSION:
            raise RefusedError("protocol", f"reply protocol {protocol}, this client speaks {PROTOCOL_VERSION}")
        ad = _ad("reply", operation, PROTOCOL_VERSION, self.key.key_id, 0, bytes(nonce), request.nonce)
        try:
            plain = self._aead.decrypt(bytes(nonce), bytes(sealed), ad)
        except (InvalidTag, ValueError) as exc:
            raise RefusedError("bad_tag", "reply does not verify") from exc
        return unpack(plain)


class Gate:
    """The store's side: authenticate, decrypt, check freshness and replay, check the role; seal replies."""

    def __init__(self, keyring: KeyRing, max_skew_s: float = 30.0, clock: Any = time.time_ns) -> None:
        self.keyring = keyring
        self.skew_ns = int(max_skew_s * 1e9)
        self._clock = clock
        # the replay cache starts empty: nothing stamped before this gate existed is accepted, so a
        # request captured before a store restart cannot be replayed after it
        self.not_before = int(clock())
        self._seen: set[tuple[str, bytes]] = set()                      # (key id, nonce) recently used
        self._expiry: list[tuple[int, tuple[str, bytes]]] = []          # heap of (forget at, entry)
        self._lock = threading.Lock()

    def open(self, operation: str, req: SealedRequest, roles: tuple[str, ...]) -> Opened:
        """The authenticated content of ``req``, or :class:`RefusedError` (reason: protocol, unknown_key,
        bad_tag, stale, replay, role, malformed)."""
        if int(req.protocol) != PROTOCOL_VERSION:
            raise RefusedError("protocol", f"protocol {req.protocol}")
        key = self.keyring.get(req.key_id)
        if key is None:
            raise RefusedError("unknown_key", f"key id {req.key_id!r} unknown or revoked")
        nonce = bytes(req.nonce)
        if len(nonce) != NONCE_BYTES:
            raise RefusedError("bad_tag", f"nonce of {len(nonce)} bytes")
        ad = _ad("request", operation, req.protocol, req.key_id, req.stamp_ns, nonce)
        try:
            plain = AESGCM(key.secret).decrypt(nonce, bytes(req.sealed), ad)
        except (InvalidTag, ValueError) as exc:
            raise RefusedError("bad_tag", f"request from {req.key_id!r} does not verify") from exc
        now = self._clock()
        if abs(now - int(req.stamp_ns)) > self.skew_ns:
            raise RefusedError("stale", f"{req.key_id!r}: timestamp {(now - int(req.stamp_ns)) / 1e9:+.1f} s off")
        if int(req.stamp_ns) < self.not_before:
            raise RefusedError("stale", f"{req.key_id!r}: stamped before the store started")
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.discard(heapq.heappop(self._expiry)[1])
            if (req.key_id, nonce) in self._seen:
                raise RefusedError("replay", f"{req.key_id!r}: nonce already used")
            # remembered until its timestamp could no longer pass the freshness check
            self._seen.add((req.key_id, nonce))
            heapq.heappush(self._expiry, (max(int(req.stamp_ns), now) + self.skew_ns, (req.key_id, nonce)))
        if key.role not in roles:
            raise RefusedError("role", f"key {req.key_id!r} ({key.role}) may not {operation}")
        try:
            meta, arrays = unpack(plain)
        except (ValueError, TypeError) as exc:
            raise RefusedError("malformed", f"{req.key_id!r}: {exc}") from exc
        return Opened(key, operation, nonce, meta, arrays)

    def seal_reply(self, opened: Opened, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
                   ) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of the reply to ``opened``, sealed with the requester's key."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        ad = _ad("reply", opened.operation, PROTOCOL_VERSION, opened.key.key_id, 0, nonce, opened.nonce)
        return nonce, AESGCM(opened.key.secret).encrypt(nonce, pack(meta, arrays), ad)

    def replay_cache_size(self) -> int:
        """Nonces currently remembered."""
        with self._lock:
            return len(self._seen)
