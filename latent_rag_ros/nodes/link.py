"""Client side of the trusted store link in ROS terms: sealed requests into service fields, replies opened.

The sealing itself is ``latent_rag_ros.security`` (ROS-free); this module only moves its envelope
into and out of the RetrieveLatents / AddIdentities / RemoveIdentities messages, so the protector,
the benchmark, admin tools and tests build requests one way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_rag_ros.config import Config
from latent_rag_ros.security import ClientSealer, RefusedError, SealedRequest, load_key
from latent_rag_ros.security.keys import key_path
from latent_rag_ros.srv import AddIdentities, RemoveIdentities, RetrieveLatents

SERVICES = {"retrieve": RetrieveLatents, "add": AddIdentities, "remove": RemoveIdentities}


def client_sealer(cfg: Config, admin: bool = False) -> ClientSealer:
    """The sealer of this robot's key (``link.key_id``) or of the administrator key (``link.admin_key_id``)."""
    keys_dir = cfg.resolve_path(cfg.link.keys_dir) if cfg.link.keys_dir else ""
    key = load_key(key_path(keys_dir, cfg.link.admin_key_id if admin else cfg.link.key_id))
    if not key.valid:
        raise ValueError(f"key {key.key_id!r} ({key.path}) is revoked: provision a new one with `latent-rag keys new`")
    return ClientSealer(key)


def to_request(operation: str, env: SealedRequest) -> Any:
    """The service request carrying ``env``."""
    req = SERVICES[operation].Request()
    req.protocol = env.protocol
    req.key_id = env.key_id
    req.stamp_ns = env.stamp_ns
    req.nonce = env.nonce
    req.sealed = env.sealed
    return req


@dataclass
class Reply:
    """An opened reply: ``ok``, the reason when not ok, and the sealed content."""

    ok: bool
    message: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


def open_reply(sealer: ClientSealer, operation: str, env: SealedRequest, res: Any) -> Reply:
    """Open the store's reply to ``env``; a bare refusal (nothing sealed) keeps its clear-text message."""
    if not len(res.sealed):
        return Reply(False, res.message or "refused", {}, {})
    try:
        meta, arrays = sealer.open_reply(operation, env, res.protocol, bytes(res.nonce), bytes(res.sealed))
    except RefusedError as exc:
        return Reply(False, f"reply rejected: {exc}", {}, {})
    ok = bool(res.ok) and bool(meta.get("ok"))
    return Reply(ok, str(meta.get("message", "")), meta, arrays)


def call(node: Any, client: Any, sealer: ClientSealer, operation: str, meta: dict[str, Any],
         arrays: dict[str, np.ndarray] | None = None, timeout_s: float = 10.0) -> Reply:
    """One sealed call from a node whose executor spins elsewhere; a timeout is a failed Reply."""
    env = sealer.seal(operation, meta, arrays)
    done = threading.Event()
    fut = client.call_async(to_request(operation, env))
    fut.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout_s):
        client.remove_pending_request(fut)
        return Reply(False, f"no reply within {timeout_s:g} s", {}, {})
    res = fut.result()
    if res is None:
        return Reply(False, "no reply", {}, {})
    return open_reply(sealer, operation, env, res)
