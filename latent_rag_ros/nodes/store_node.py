"""store_node: the trusted server's vector store behind RetrieveLatents and AddIdentities services.

Requests are taken concurrently (reentrant callback group on a multi-threaded executor), so a slow
client does not block the others; the store itself is used under one lock (a retrieval holds it for
about 1 ms at 1M entries, see store/ann.py), and adds are acknowledged only once durable. Every
malformed request gets ok=false and a message; no request returns more than ``store.max_m`` codes,
so a client cannot dump the store, and ``store.rate_limit_hz`` bounds how often each client (by its
declared name) may ask. A request that names its generator or re-ID model is refused unless the
store was built for those models. Every retrieve/add, refused ones too (and retention expiry), goes
through ``_outcome`` into the store's hash-chained audit trail (store/audit.py); a retrieval whose
record cannot be written returns nothing. Entries retrieved at an abnormal rate are flagged in the
status.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node

from latent_rag_ros.core.retrieval import RetrievalError, retrieve
from latent_rag_ros.nodes.common import NodeStatus, declare_config, f32_array, now_ms
from latent_rag_ros.srv import AddIdentities, RetrieveLatents
from latent_rag_ros.store.audit import AuditTrail
from latent_rag_ros.store.base import model_mismatch
from latent_rag_ros.store.rate_limit import RateLimiter

MAX_LABEL_CHARS = 256   # longest identity label an add may store


class StoreNode(Node):
    """Serves identity-guided latent retrieval and incremental adds from a store directory or URI."""

    def __init__(self) -> None:
        super().__init__("store_node")
        self.cfg = declare_config(self)
        self.status = NodeStatus(self, self.cfg.ros.status_period_s)
        self._lock = threading.RLock()
        self.store = None
        self.audit: AuditTrail | None = None
        self.open_error = ""
        self.limiter = RateLimiter(self.cfg.store.rate_limit_hz, self.cfg.store.rate_limit_burst or None)
        self._open()
        group = ReentrantCallbackGroup()
        self.create_service(RetrieveLatents, self.cfg.ros.retrieve_service, self.on_retrieve, callback_group=group)
        self.create_service(AddIdentities, self.cfg.ros.add_service, self.on_add, callback_group=group)
        self.get_logger().info(
            f"serving {self.cfg.ros.retrieve_service} and {self.cfg.ros.add_service} from {self.cfg.store.path}"
        )

    def _open(self) -> None:
        from latent_rag_ros.store import open_store

        sc = self.cfg.store
        try:
            self.store = open_store(sc.path, backend=sc.backend, **({"key_file": sc.key_file} if sc.key_file else {}))
            self.audit = AuditTrail.for_store(sc.path, sc.audit_file, sc.audit_window_s, sc.audit_flag_count)
            if sc.max_age_s > 0:
                self.create_timer(sc.retention_check_s, self._expire)
        except Exception as exc:  # noqa: BLE001 - keep serving, answer every request with the reason
            if self.store is not None:
                self.store.close()
                self.store = None
            self.open_error = f"store {self.cfg.store.path!r} unavailable: {exc}"
            self.get_logger().error(self.open_error)
            self.status.set(DiagnosticStatus.ERROR, self.open_error, store_loaded=False)
            return
        self.status.set(DiagnosticStatus.OK, "serving", store_loaded=True, size=len(self.store),
                        version=self.store.version)

    def _refuse(self, res: Any, reason: str, key: str = "errors") -> Any:
        """Answer ok=false with ``reason``, count it under ``key`` and log it (throttled)."""
        res.ok = False
        res.message = reason
        self.status.reject(key, reason)
        self.get_logger().warning(f"request refused: {reason}", throttle_duration_sec=5.0)
        return res

    def on_retrieve(self, req: RetrieveLatents.Request, res: RetrieveLatents.Response) -> RetrieveLatents.Response:
        """Answer one retrieval; any unexpected failure becomes ok=false (the service never dies)."""
        try:
            res = self._retrieve(req, res)
        except Exception as exc:  # noqa: BLE001 - fail safe: a reply without codes, the node keeps serving
            res = self._refuse(RetrieveLatents.Response(), f"internal error: {type(exc).__name__}: {exc}")
        if not self._outcome("retrieve", req.client, res.ids if res.ok else [], res.ok, res.message) and res.ok:
            return self._refuse(RetrieveLatents.Response(), "audit trail unavailable: nothing is served unaudited")
        return res

    def on_add(self, req: AddIdentities.Request, res: AddIdentities.Response) -> AddIdentities.Response:
        """Answer one add; any unexpected failure becomes ok=false (nothing acknowledged, node keeps serving)."""
        try:
            res = self._add(req, res)
        except Exception as exc:  # noqa: BLE001 - fail safe: not acknowledged, the node keeps serving
            res = self._refuse(AddIdentities.Response(), f"add failed: {type(exc).__name__}: {exc}")
        self._outcome("add", getattr(req, "client", ""), res.ids if res.ok else [], res.ok, res.message)
        return res

    def _retrieve(self, req: RetrieveLatents.Request, res: RetrieveLatents.Response) -> RetrieveLatents.Response:
        """Eq. 1-2 for one identity vector, with the query's own entry (and optionally label) excluded."""
        t0 = now_ms()
        self.status.count("requests")
        res.ok = False
        if self.store is None:
            return self._refuse(res, self.open_error)
        if not self.limiter.allow(req.client or "anonymous"):
            return self._refuse(res, f"rate limit: client {req.client[:80] or 'anonymous'!r} is above "
                                f"{self.limiter.rate:g} requests/s", "rate_limited")
        mismatch = model_mismatch(self.store.built_with, {"generator": req.generator, "reid": req.reid},
                                  f"store {self.cfg.store.path!r}")
        if mismatch:
            return self._refuse(res, mismatch)
        m = int(req.m)
        if m < 1 or m > self.cfg.store.max_m:
            return self._refuse(res, f"m={m} out of range 1..{self.cfg.store.max_m}")
        query = np.frombuffer(req.identity, dtype=np.float32) if len(req.identity) else np.zeros(0, np.float32)
        exclude = int(req.exclude_id) if req.exclude_id >= 0 else None
        try:
            with self._lock:
                got = retrieve(self.store, query, m, [exclude], [req.exclude_label or None])
        except (RetrievalError, ValueError) as exc:
            return self._refuse(res, str(exc))
        lat = got.latents[0]
        res.ok = True
        res.latents = f32_array(lat.reshape(-1))
        res.shape = [int(s) for s in lat.shape]
        res.scores = f32_array(got.scores[0])
        res.ids = [int(i) for i in got.ids[0]]
        res.store_version = got.version
        self.status.latency("retrieve", now_ms() - t0)
        return res

    def _add(self, req: AddIdentities.Request, res: AddIdentities.Response) -> AddIdentities.Response:
        """Append identities durably; the reply comes only after the store acknowledged them."""
        self.status.count("add_requests")
        res.ok = False
        if self.store is None:
            return self._refuse(res, self.open_error)
        n = int(req.count)
        store = self.store
        try:
            if n < 1 or n > self.cfg.store.max_add:
                raise ValueError(f"count={n} out of range 1..{self.cfg.store.max_add}")
            vec = np.frombuffer(req.identities, dtype=np.float32)
            lat = np.frombuffer(req.latents, dtype=np.float32)
            if vec.size != n * store.dim:
                raise ValueError(f"identities: expected {n}x{store.dim} values, got {vec.size}")
            if lat.size != n * store.num_ws * store.w_dim:
                raise ValueError(f"latents: expected {n}x{store.num_ws}x{store.w_dim} values, got {lat.size}")
            labels = list(req.labels) or None
            if labels is not None and len(labels) != n:
                raise ValueError(f"labels: expected {n}, got {len(labels)}")
            if labels is not None and max(len(x) for x in labels) > MAX_LABEL_CHARS:
                raise ValueError(f"labels: at most {MAX_LABEL_CHARS} characters each")
            with self._lock:
                ids = store.add(vec.reshape(n, store.dim), lat.reshape(n, store.num_ws, store.w_dim), labels)
        except OSError as exc:   # e.g. a full disk: the store rolled the add back, reads go on
            return self._refuse(res, f"store {self.cfg.store.path!r} cannot write: {exc.strerror or exc}; nothing "
                                "of this request was stored (free disk space, then retry)")
        except (ValueError, RuntimeError) as exc:
            return self._refuse(res, str(exc))
        res.ok = True
        res.ids = [int(i) for i in ids]
        res.store_version = store.version
        res.size = len(store)
        self.status.set(DiagnosticStatus.OK, "serving", size=len(store), version=store.version)
        return res

    def _outcome(self, action: str, key_id: str, ids: Any, ok: bool, reason: str = "") -> bool:
        """Audit hook: append one record to the store's audit trail; False when it cannot be written."""
        if self.audit is None:
            return False
        try:
            self.audit.record(action, key_id or "anonymous", [int(i) for i in ids], ok, reason)
        except (OSError, RuntimeError) as exc:
            self.get_logger().error(f"audit trail {self.audit.path}: {exc}")
            self.status.count("audit_errors")
            return False
        if self.audit.new_flags:
            flagged = self.audit.monitor.flagged()
            self.get_logger().warning(f"abnormal retrieval rate of entries {[f['id'] for f in flagged][:20]}")
            self.status.set(DiagnosticStatus.WARN, "abnormal retrieval rate", flagged=json.dumps(flagged))
        return True

    def _expire(self) -> None:
        """Retention timer: erase entries older than store.max_age_s (same path as a removal)."""
        try:
            with self._lock:
                gone = self.store.expire(self.cfg.store.max_age_s) if self.store is not None else []
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            self.get_logger().error(f"retention: {exc}")
            self._outcome("expire", "retention", [], False, str(exc))
            return
        if len(gone):
            self._outcome("expire", "retention", gone, True, f"older than {self.cfg.store.max_age_s:g} s")

    def destroy_node(self) -> None:
        if getattr(self, "store", None) is not None:
            with self._lock:
                self.store.close()
            self.store = None
        if getattr(self, "audit", None) is not None:
            self.audit.close()
            self.audit = None
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros store_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(StoreNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
