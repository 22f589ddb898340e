"""Provisioned link keys: one 0600 JSON file per key (robot or admin), and the store's reloading key ring.

A key file ``<keys_dir>/<key_id>.key`` holds a 256-bit random secret (``secrets``), its role and
its state. The store reads every ``*.key`` file of its keys directory; a robot needs only its own
file. Revoking rewrites the file without its secret, so a revoked key can never authenticate again,
and the store's :class:`KeyRing` notices changed files (mtime/size) on the next request: no restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from latent_rag_ros.fileio import atomic_write_text

ROLES = ("robot", "admin")
FORMAT = "latent-rag-key/1"
SECRET_BYTES = 32
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeyFileError(ValueError):
    """A key file or key id is invalid or missing; the message names the file and what to do."""


@dataclass(frozen=True)
class Key:
    """One provisioned key. ``secret`` is empty for a revoked key and never shown in repr."""

    key_id: str
    role: str
    secret: bytes = field(repr=False)
    created: str = ""
    revoked: str = ""       # ISO time of revocation, "" while valid
    path: str = ""

    @property
    def valid(self) -> bool:
        """True while the key may authenticate (not revoked and has a secret)."""
        return not self.revoked and len(self.secret) == SECRET_BYTES

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 digest of the secret, to compare copies without showing the secret."""
        if not self.secret:
            return "-"
        return hashlib.sha256(b"latent-rag key fingerprint\0" + self.secret).hexdigest()[:16]


def default_keys_dir() -> Path:
    """``$ROS_HOME/latent_rag_keys`` (ROS_HOME defaults to ``~/.ros``, as in ROS 2)."""
    ros_home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return Path(ros_home) / "latent_rag_keys"


def resolve_keys_dir(value: str | os.PathLike | None) -> Path:
    """The configured keys directory, or the default when empty."""
    return Path(value).expanduser() if value else default_keys_dir()


def check_key_id(key_id: str) -> str:
    """Key ids are file names: letters, digits, ``_.-``, at most 64 characters."""
    if not isinstance(key_id, str) or not _ID_RE.match(key_id):
        raise KeyFileError(f"invalid key id {key_id!r}: use letters, digits, '_', '.', '-' (at most 64)")
    return key_id


def key_path(keys_dir: str | os.PathLike | None, key_id: str) -> Path:
    """Where the key ``key_id`` lives in ``keys_dir``."""
    return resolve_keys_dir(keys_dir) / f"{check_key_id(key_id)}.key"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_private(path: Path, data: dict) -> None:
    """Atomically write ``data`` as JSON to a 0600 file in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n", mode=0o600)  # the temporary file is 0600 too


def new_key(keys_dir: str | os.PathLike | None, key_id: str, role: str, replace: bool = False) -> Key:
    """Create a key file with a fresh random secret; refuses to overwrite unless ``replace`` (rotation)."""
    if role not in ROLES:
        raise KeyFileError(f"role {role!r} unknown: use one of {', '.join(ROLES)}")
    path = key_path(keys_dir, key_id)
    if path.exists() and not replace:
        raise KeyFileError(f"key file {path} exists: pick another id, or replace its secret with --replace")
    secret = secrets.token_bytes(SECRET_BYTES)
    created = _now()
    _write_private(path, {"format": FORMAT, "id": key_id, "role": role, "created": created, "revoked": "",
                          "secret": base64.b64encode(secret).decode("ascii")})
    return Key(key_id, role, secret, created, "", str(path))


def load_key(path: str | os.PathLike) -> Key:
    """Read and check one key file (format, id = file name, role, secret length, owner-only mode)."""
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_text()
    except OSError as exc:
        raise KeyFileError(f"key file {p}: {exc.strerror or exc}; create it with `latent-rag keys new`") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {p} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}): "
                           f"chmod 600 {p}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeyFileError(f"key file {p} is not valid JSON ({exc}); re-create it with `latent-rag keys new`") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KeyFileError(f"key file {p}: format must be {FORMAT!r}")
    key_id = data.get("id")
    if key_id != p.stem:
        raise KeyFileError(f"key file {p}: id {key_id!r} does not match the file name {p.stem!r}")
    role = data.get("role")
    if role not in ROLES:
        raise KeyFileError(f"key file {p}: role {role!r} must be one of {', '.join(ROLES)}")
    revoked = str(data.get("revoked") or "")
    secret = b""
    if not revoked:
        try:
            secret = base64.b64decode(str(data.get("secret", "")), validate=True)
        except ValueError as exc:
            raise KeyFileError(f"key file {p}: secret is not base64") from exc
        if len(secret) != SECRET_BYTES:
            raise KeyFileError(f"key file {p}: secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return Key(key_id, role, secret, str(data.get("created", "")), revoked, str(p))


def revoke_key(keys_dir: str | os.PathLike | None, key_id: str) -> Key:
    """Rewrite the key file without its secret, marked revoked (irreversible: issue a new key instead)."""
    path = key_path(keys_dir, key_id)
    key = load_key(path)
    if key.revoked:
        return key
    revoked = _now()
    _write_private(path, {"format": FORMAT, "id": key.key_id, "role": key.role, "created": key.created,
                          "revoked": revoked, "secret": ""})
    return Key(key.key_id, key.role, b"", key.created, revoked, str(path))


def list_keys(keys_dir: str | os.PathLike | None) -> tuple[list[Key], list[str]]:
    """Every key file in ``keys_dir`` (sorted by id) and one error line per unreadable file."""
    d = resolve_keys_dir(keys_dir)
    keys, errors = [], []
    if not d.is_dir():
        return keys, errors
    for p in sorted(d.glob("*.key")):
        try:
            keys.append(load_key(p))
        except KeyFileError as exc:
            errors.append(str(exc))
    return keys, errors


class KeyRing:
    """The store's view of its keys directory, re-read whenever a key file is added, changed or removed."""

    def __init__(self, keys_dir: str | os.PathLike | None) -> None:
        self.dir = resolve_keys_dir(keys_dir)
        self._lock = threading.Lock()
        self._sig: tuple = ()
        self._keys: dict[str, Key] = {}
        self.errors: list[str] = []
        self.reloads = 0
        self.refresh()

    def _signature(self) -> tuple:
        try:
            entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size, e.stat().st_ino)
                             for e in os.scandir(self.dir) if e.name.endswith(".key"))
        except FileNotFoundError:
            return ("missing",)
        return tuple(entries)

    def refresh(self) -> bool:
        """Reload if any key file changed since the last look; returns True when it reloaded."""
        sig = self._signature()
        with self._lock:
            if sig == self._sig:
                return False
            keys, errors = list_keys(self.dir)
            self._keys = {k.key_id: k for k in keys}
            self.errors = errors
            self._sig = sig
            self.reloads += 1
            return True

    def get(self, key_id: str) -> Key | None:
        """The valid (not revoked) key ``key_id`` after a freshness check, else None."""
        self.refresh()
        with self._lock:
            key = self._keys.get(key_id)
        return key if key is not None and key.valid else None

    def counts(self) -> dict[str, int]:
        """Valid keys per role and revoked keys (what the store's status shows; no ids, no secrets)."""
        with self._lock:
            keys = list(self._keys.values())
        out = {f"keys_{r}": sum(1 for k in keys if k.valid and k.role == r) for r in ROLES}
        out["keys_revoked"] = sum(1 for k in keys if not k.valid)
        out["keys_unreadable"] = len(self.errors)
        return out
