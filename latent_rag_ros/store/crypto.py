"""Row sealing for the store at rest: AES-256-GCM with a key file, or an integrity digest without one.

Every stored value (a row's vector, its W+ code, its label and name, each chunk of the FAISS
snapshot) goes through a codec's ``seal(aad, data)`` / ``open(aad, blob)``. ``aad`` names where the
value belongs (store uuid, table, row id), so a value copied to another row or store fails to open.

- :class:`AeadCodec` (a key file given): ``cryptography``'s AES-256-GCM, a fresh random 96-bit
  nonce per value (``nonce || ciphertext || tag``). A wrong key or a changed byte fails the tag.
- :class:`PlainCodec` (no key): the value in clear followed by an 8-byte digest of ``aad || value``
  (hashlib), so damage is still detected; this is integrity, not secrecy. New stores use SHA-256
  (hashlib's fast path: SHA-NI/OpenSSL, ~1.8 GB/s here vs ~1.0 GB/s for BLAKE2b); stores made before
  record no ``digest`` in their meta table and keep BLAKE2b (the store's ``meta.digest`` names it).

Key files hold 32 random bytes as 64 hex characters, mode 0600, outside the store directory
(:func:`load_key` refuses anything else); :func:`key_id` is a public fingerprint (truncated
SHA-256) used in error messages, the audit trail and the store's metadata, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from latent_rag_ros.store.base import StoreError

KEY_BYTES = 32
NONCE_BYTES = 12
DIGEST_BYTES = 8
DIGESTS = ("sha256", "blake2b")  # the first is what new stores use


class SealError(ValueError):
    """A sealed value failed its tag or digest (wrong key, damaged or moved bytes)."""


def key_id(key: bytes) -> str:
    """Public fingerprint of a key (16 hex characters); safe to log and store."""
    return hashlib.sha256(b"latent_rag_ros.store key id\0" + key).hexdigest()[:16]


def generate_key_file(path: str | os.PathLike) -> str:
    """Write a new random key to ``path`` (mode 0600, never overwriting); returns its key id."""
    p = Path(path).expanduser()
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_id(key)


def load_key(path: str | os.PathLike, store_dir: str | os.PathLike | None = None) -> bytes:
    """Read a key file; refuse one readable by group/others, malformed, or inside ``store_dir``."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise StoreError(f"{p}: key file not found (create one with `latent-rag store keygen {p}`)") from None
    if store_dir is not None:
        root = Path(store_dir).expanduser().resolve()
        if root == p.resolve().parent or root in p.resolve().parents:
            raise StoreError(f"{p}: the key file is inside the store directory {root}; keep it apart from the data "
                             "(a copied store must not carry its key)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(f"{p}: key file is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run `chmod 600 {p}`")
    text = p.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise StoreError(f"{p}: not a store key file (expected {2 * KEY_BYTES} hex characters)")
    return key


class PlainCodec:
    """No encryption: value || 8-byte SHA-256 (old stores: BLAKE2b) of aad || value (detects damage, hides nothing)."""

    scheme = "none"
    key_id = ""

    def __init__(self, digest: str = DIGESTS[0]) -> None:
        if digest not in DIGESTS:
            raise StoreError(f"unknown integrity digest {digest!r} in the store's meta table (known: {DIGESTS})")
        self.digest = digest

    def _hash(self, aad: bytes, data: bytes | memoryview) -> bytes:
        h = hashlib.sha256(aad) if self.digest == "sha256" else hashlib.blake2b(aad, digest_size=DIGEST_BYTES)
        h.update(data)
        return h.digest()[:DIGEST_BYTES]

    def seal(self, aad: bytes, data: bytes) -> bytes:
        return bytes(data) + self._hash(aad, data)

    def open(self, aad: bytes, blob: bytes) -> bytes | memoryview:
        if len(blob) < DIGEST_BYTES:
            raise SealError("integrity digest does not match")
        data = memoryview(blob)[:-DIGEST_BYTES]  # no copy of the value on the read path
        if not hmac.compare_digest(self._hash(aad, data), blob[-DIGEST_BYTES:]):
            raise SealError("integrity digest does not match")
        return data


class AeadCodec:
    """AES-256-GCM: nonce || ciphertext || tag, with ``aad`` bound to the value's place."""

    scheme = "aes-256-gcm"

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = key_id(key)

    def seal(self, aad: bytes, data: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, bytes(data), aad)

    def open(self, aad: bytes, blob: bytes) -> bytes | memoryview:
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], memoryview(blob)[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise SealError("authentication tag does not match (wrong key or damaged bytes)") from None


Codec = PlainCodec | AeadCodec


def codec_for(key_file: str | os.PathLike | None, store_dir: str | os.PathLike | None = None) -> Codec:
    """AeadCodec for a key file, PlainCodec for none."""
    return AeadCodec(load_key(key_file, store_dir)) if key_file else PlainCodec()
