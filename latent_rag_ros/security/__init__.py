"""The trusted link to the store: provisioned per-robot/admin keys and AEAD-sealed requests and replies.

ROS-free (nodes do the message conversion). Everything cryptographic comes from ``cryptography``
(AES-256-GCM) and ``secrets``/``hashlib``; nothing here is a home-made primitive.
"""

from latent_rag_ros.security.keys import (
    ROLES,
    Key,
    KeyFileError,
    KeyRing,
    default_keys_dir,
    list_keys,
    load_key,
    new_key,
    resolve_keys_dir,
    revoke_key,
)
from latent_rag_ros.security.sealing import (
    PROTOCOL_VERSION,
    ClientSealer,
    Gate,
    Opened,
    RefusedError,
    SealedRequest,
    pack,
    unpack,
)

__all__ = [
    "PROTOCOL_VERSION", "ROLES", "ClientSealer", "Gate", "Key", "KeyFileError", "KeyRing", "Opened", "RefusedError",
    "SealedRequest", "default_keys_dir", "list_keys", "load_key", "new_key", "pack", "resolve_keys_dir",
    "revoke_key", "unpack",
]
