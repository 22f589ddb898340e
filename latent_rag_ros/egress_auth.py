"""Egress integrity: an HMAC-SHA256 tag proves a ProtectedCrop came from this robot's protector.

The protector tags every message it publishes with a per-run key that only it and the egress node
can read (a 0600 file in a 0700 folder); egress forwards a message only when its tag verifies, then
strips the tag. A ProtectedCrop injected by any other participant never reaches ``/reid/protected``.
Only the standard library's ``hmac``/``hashlib``/``secrets`` are used (no home-made crypto).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

KEY_ENV = "LATENT_RAG_EGRESS_KEY_FILE"
KEY_BYTES = 32
_DOMAIN = b"latent_rag_ros/ProtectedCrop/v1\x00"   # binds the tag to this message type and version


class EgressKeyError(RuntimeError):
    """The egress key file is missing, unreadable or readable by others; the message names the file."""


def default_key_file() -> Path:
    """Where protector and egress meet when nothing set ``LATENT_RAG_EGRESS_KEY_FILE``.

    ``$XDG_RUNTIME_DIR`` (a tmpfs emptied at boot) when set, else the temp folder; one folder per user.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"latent_rag_ros-{os.getuid()}" / "egress.key"


def key_file(env: dict[str, str] | None = None) -> Path:
    """The key file named by ``LATENT_RAG_EGRESS_KEY_FILE``, else :func:`default_key_file`."""
    value = (os.environ if env is None else env).get(KEY_ENV, "")
    return Path(value) if value else default_key_file()


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise EgressKeyError(f"{folder}: must be owned by uid {os.getuid()} with mode 0700 "
                             f"(is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); remove it and restart")


def _random_key_file(folder: Path) -> str:
    """A new 0600 file of random key bytes in ``folder`` (a temporary name; the caller moves it)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".egress-")   # created 0600
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_new_key(path: Path) -> Path:
    """Write a fresh random key to ``path`` (0600, in a 0700 folder), replacing any old one."""
    _private_dir(path.parent)
    os.replace(_random_key_file(path.parent), path)
    return path


def new_run_key(env: dict[str, str]) -> Path:
    """A fresh per-run key in a new private folder; sets ``LATENT_RAG_EGRESS_KEY_FILE`` in ``env``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or None
    folder = Path(tempfile.mkdtemp(prefix="latent_rag_egress_", dir=base))   # created 0700
    path = write_new_key(folder / "egress.key")
    env[KEY_ENV] = str(path)
    return path


def load_key(path: Path, create: bool = True) -> bytes:
    """Read the key at ``path``; create it first (atomically, once) when missing and ``create``."""
    if create and not path.exists():
        _private_dir(path.parent)
        tmp = _random_key_file(path.parent)
        try:
            os.link(tmp, path)   # atomic create-if-absent: protector and egress may race here
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise EgressKeyError(f"{path}: egress key must be owned by uid {os.getuid()} with mode 0600 "
                                 f"(is mode {stat.S_IMODE(st.st_mode):o}); delete it and restart the graph")
        key = path.read_bytes()
    except FileNotFoundError:
        raise EgressKeyError(f"{path}: egress key missing; start protector and egress with the same "
                             f"{KEY_ENV} (latent-rag run and the launch files do)") from None
    if len(key) != KEY_BYTES:
        raise EgressKeyError(f"{path}: egress key has {len(key)} bytes, expected {KEY_BYTES}; delete it and restart")
    return key


class EgressTagger:
    """HMAC-SHA256 tags over a serialized ProtectedCrop (with its tag field empty)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"egress key must be {KEY_BYTES} bytes")
        self._key = key

    def tag(self, payload: bytes) -> bytes:
        """The 32-byte tag of ``payload``."""
        return hmac.new(self._key, _DOMAIN + payload, hashlib.sha256).digest()

    def verify(self, payload: bytes, tag: bytes) -> bool:
        """True when ``tag`` is this key's tag of ``payload`` (constant-time comparison)."""
        return len(tag) == hashlib.sha256().digest_size and hmac.compare_digest(self.tag(payload), tag)
