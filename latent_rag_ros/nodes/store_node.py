"""store_node: the trusted server's vector store behind RetrieveLatents, AddIdentities and RemoveIdentities.

Trusted-link zone: its services cross the network (remote robots call them), so they are protected
by the link itself (latent_rag_ros/security): every request is authenticated with a provisioned key
and its content is AES-GCM sealed; the reply is sealed for the same key. Retrieval needs a robot
key, adds and removals an administrator key. An unauthenticated, stale or replayed request gets
ok=false and nothing else; refusals are counted in /diagnostics (which carries counters, key
counts per role and the store version, not its size: it is readable on the network). Keys are
re-read from the keys directory whenever a file changes, so a revoked or added key takes effect
without a restart.

Requests are taken concurrently (reentrant callback group on a multi-threaded executor), and the
store itself is used under one lock (a retrieval holds it for about 1 ms at 1M entries, see
store/ann.py); adds and removals are acknowledged only once durable. No request returns more than
``store.max_m`` codes, and ``store.rate_limit_hz`` bounds how often each authenticated key may ask.
A request that names its generator or re-ID model is refused unless the store was built for them.
Every outcome (refusals too, and retention expiry) goes through ``_outcome`` into the store's
hash-chained audit trail (store/audit.py); a retrieval whose record cannot be written returns nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import ReentrantCallbackGroup

from latent_rag_ros.config import demo_store_hint, demo_store_path
from latent_rag_ros.core.retrieval import RetrievalError, retrieve
from latent_rag_ros.nodes.common import now_ms, service_qos
from latent_rag_ros.nodes.managed import ManagedNode
from latent_rag_ros.security import PROTOCOL_VERSION, Gate, KeyRing, Opened, RefusedError, SealedRequest
from latent_rag_ros.srv import AddIdentities, RemoveIdentities, RetrieveLatents
from latent_rag_ros.store.audit import AuditTrail
from latent_rag_ros.store.base import model_mismatch
from latent_rag_ros.store.rate_limit import RateLimiter

NOT_AUTHENTICATED = "not authenticated (unknown or revoked key, bad tag, stale timestamp or replayed nonce)"
# What a refused caller is told: never more than this (details go to the store's own log only).
PUBLIC_REASONS = {
    "protocol": None,   # filled per request: names both versions
    "unknown_key": NOT_AUTHENTICATED,
    "bad_tag": NOT_AUTHENTICATED,
    "stale": NOT_AUTHENTICATED,
    "replay": NOT_AUTHENTICATED,
    "role": "not authorized: this key's role may not do this",
    "malformed": "malformed request",
}
_UNAUTHENTICATED = ("protocol", "unknown_key", "bad_tag", "stale", "replay")
MAX_LABEL_CHARS = 256   # longest identity label an add may store


class StoreNode(ManagedNode):
    """Serves identity-guided latent retrieval, adds and removals from a store directory or URI (a lifecycle node).

    The store and its audit trail open in ``configure`` (a missing or damaged store fails it with one
    line); the services exist only while the node is active.
    """

    ZONE = "trusted_link"   # latent_rag_ros/zones.py: network transport, protected by the link crypto

    def __init__(self) -> None:
        super().__init__("store_node")
        self._lock = threading.RLock()
        self.store = None
        self.audit: AuditTrail | None = None
        self.open_error = "store not configured (lifecycle state unconfigured)"
        self.limiter = RateLimiter(self.cfg.store.rate_limit_hz, self.cfg.store.rate_limit_burst or None)
        keys_dir = self.cfg.resolve_path(self.cfg.link.keys_dir) if self.cfg.link.keys_dir else ""
        self.keyring = KeyRing(keys_dir)
        self.gate = Gate(self.keyring, self.cfg.link.max_skew_s)
        self._served: list = []
        self._retention_timer = None

    def configure(self) -> None:
        """Open the store and its audit trail; read the keys."""
        self._open()
        self._key_status()
        if not any(self.keyring.counts()[f"keys_{r}"] for r in ("robot", "admin")):
            self.get_logger().warning(f"no valid keys in {self.keyring.dir}: every request will be refused "
                                      "(create them with `latent-rag keys new`)")

    def activate(self) -> None:
        """Serve RetrieveLatents, AddIdentities and RemoveIdentities; start the retention timer."""
        group, qos = ReentrantCallbackGroup(), service_qos(self.cfg.ros.service_depth)
        self._served = [
            self.create_service(RetrieveLatents, self.cfg.ros.retrieve_service, self.on_retrieve, qos_profile=qos,
                                callback_group=group),
            self.create_service(AddIdentities, self.cfg.ros.add_service, self.on_add, qos_profile=qos,
                                callback_group=group),
            self.create_service(RemoveIdentities, self.cfg.ros.remove_service, self.on_remove, qos_profile=qos,
                                callback_group=group),
        ]
        if self.cfg.store.max_age_s > 0:
            self._retention_timer = self.create_timer(self.cfg.store.retention_check_s, self._expire)
        self.status.set(DiagnosticStatus.OK, "serving")
        self.get_logger().info(
            f"serving {self.cfg.ros.retrieve_service}, {self.cfg.ros.add_service} and {self.cfg.ros.remove_service} "
            f"from {self.cfg.store.path}; keys from {self.keyring.dir} (link protocol {PROTOCOL_VERSION})"
        )

    def deactivate(self) -> None:
        """Withdraw the services (a client sees them gone) and stop the retention timer."""
        for srv in self._served:
            self.destroy_service(srv)
        self._served = []
        if self._retention_timer is not None:
            self.destroy_timer(self._retention_timer)
            self._retention_timer = None

    def release(self) -> None:
        """Close the store and the audit trail."""
        with self._lock:
            if self.store is not None:
                self.store.close()
                self.store = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        self.open_error = "store not configured (lifecycle state unconfigured)"
        self.status.set(self.status.level, self.status.message, store_loaded=False)

    def _open(self) -> None:
        """Open the store and the audit trail; RuntimeError with the one-line reason when that fails."""
        from latent_rag_ros.store import open_store

        sc = self.cfg.store
        try:
            self.store = open_store(sc.path, backend=sc.backend, **({"key_file": sc.key_file} if sc.key_file else {}))
            self.audit = AuditTrail.for_store(sc.path, sc.audit_file, sc.audit_window_s, sc.audit_flag_count)
        except Exception as exc:  # noqa: BLE001 - one line naming the store and what to do
            self.open_error = f"store {self.cfg.store.path!r} unavailable: {exc}"
            if self.cfg.store.path == str(demo_store_path()):
                hint = demo_store_hint(self.cfg.store.path)
                self.open_error = f"demo store {self.cfg.store.path!r} not built yet: {hint}"
            self.status.set(DiagnosticStatus.ERROR, self.open_error, store_loaded=False)
            raise RuntimeError(self.open_error) from None
        self.open_error = ""
        # no size in the status: /diagnostics of this trusted-link node is readable on the network
        self.status.set(DiagnosticStatus.OK, "inactive: store open", store_loaded=True, version=self.store.version)

    def _key_status(self) -> None:
        """Key counts per role (never ids or secrets) in the status; unreadable key files logged once each."""
        if self.keyring.refresh():
            for err in self.keyring.errors:
                self.get_logger().error(f"key file skipped: {err}")
        self.status.set(self.status.level, self.status.message, **self.keyring.counts())

    # ------------------------------------------------------------------ the link
    def _authenticate(self, operation: str, req: Any, res: Any, roles: tuple[str, ...]) -> Opened | None:
        """The authenticated request, or None with ``res`` set to a bare refusal (ok=false, a reason, nothing else)."""
        res.protocol = PROTOCOL_VERSION
        res.ok = False
        self._key_status()
        envelope = SealedRequest(int(req.protocol), str(req.key_id), int(req.stamp_ns), bytes(req.nonce),
                                 bytes(req.sealed))
        try:
            return self.gate.open(operation, envelope, roles)
        except RefusedError as exc:
            self.status.count("refused")
            self.status.reject(f"refused_{exc.reason}", f"{operation} refused")   # the reason code only
            if exc.reason == "protocol":
                res.message = (f"protocol version {req.protocol} not supported: this store speaks link protocol "
                               f"{PROTOCOL_VERSION}; update the client (latent_rag_ros)")
            else:
                res.message = PUBLIC_REASONS.get(exc.reason) or NOT_AUTHENTICATED
            self.get_logger().warning(f"{operation} refused ({exc.reason}): {exc.detail}", throttle_duration_sec=2.0)
            key_id = "" if exc.reason in _UNAUTHENTICATED else envelope.key_id
            self._outcome(operation, key_id, [], False, exc.reason)
            return None

    def _reply(self, res: Any, opened: Opened, ok: bool, meta: dict[str, Any],
               arrays: dict[str, np.ndarray] | None = None) -> Any:
        """Seal the reply for the requester's key; ``ok`` is the only clear-text result."""
        res.ok = ok
        res.message = ""
        nonce, sealed = self.gate.seal_reply(opened, {"ok": ok, **meta}, arrays)
        res.nonce = nonce
        res.sealed = sealed
        return res

    def _fail(self, res: Any, opened: Opened, action: str, message: str, counter: str = "errors") -> Any:
        """An authenticated request that cannot be served: the reason sealed for the requester, counted, logged."""
        self.status.reject(counter, f"{action} failed")
        self.get_logger().warning(f"{action} from {opened.key.key_id!r} failed: {message}", throttle_duration_sec=5.0)
        self._outcome(action, opened.key.key_id, [], False, message)
        return self._reply(res, opened, False, {"message": message})

    def _internal_error(self, res: Any, action: str, exc: Exception) -> Any:
        """Any unexpected failure: a bare ok=false (nothing sealed, nothing stored), the node keeps serving."""
        res.protocol = PROTOCOL_VERSION
        res.ok = False
        res.message = "internal error (see the store's log)"
        self.status.reject("errors", f"{action}: internal error")
        self.get_logger().error(f"{action}: internal error: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
        self._outcome(action, "", [], False, "internal error")
        return res

    def _outcome(self, action: str, key_id: str, ids: list[int], ok: bool, reason: str) -> bool:
        """The single place where every retrieve/add/remove outcome is known with the authenticated key id.

        ``key_id`` is "" when the request was not authenticated. Each outcome is appended to the store's
        hash-chained audit trail (store/audit.py); False when the record could not be written (a
        retrieval is then not served). Entries retrieved at an abnormal rate are logged and counted in
        the status (the count only: /diagnostics is readable on the network).
        """
        self.get_logger().debug(f"{action} key={key_id or '-'} ok={ok} n={len(ids)} reason={reason or '-'}")
        if self.audit is None:
            return False
        try:
            self.audit.record(action, key_id, [int(i) for i in ids], ok, reason)
        except (OSError, RuntimeError) as exc:
            self.get_logger().error(f"audit trail {self.audit.path}: {exc}", throttle_duration_sec=5.0)
            self.status.count("audit_errors")
            return False
        if self.audit.new_flags:
            flagged = self.audit.monitor.flagged()
            self.get_logger().warning(f"abnormal retrieval rate of entries {[f['id'] for f in flagged][:20]} "
                                      f"(last key {flagged[0]['last_key'] if flagged else '-'})")
            self.status.set(DiagnosticStatus.WARN, "abnormal retrieval rate", flagged_entries=len(flagged))
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
            self._outcome("expire", "retention", [int(i) for i in gone], True,
                          f"older than {self.cfg.store.max_age_s:g} s")

    # ------------------------------------------------------------------ services
    def on_retrieve(self, req: RetrieveLatents.Request, res: RetrieveLatents.Response) -> RetrieveLatents.Response:
        """Answer one retrieval; any unexpected failure becomes a bare ok=false (the service never dies)."""
        try:
            return self._retrieve(req, res)
        except Exception as exc:  # noqa: BLE001 - fail safe: a reply without codes, the node keeps serving
            return self._internal_error(RetrieveLatents.Response(), "retrieve", exc)

    def on_add(self, req: AddIdentities.Request, res: AddIdentities.Response) -> AddIdentities.Response:
        """Answer one add; any unexpected failure becomes a bare ok=false (nothing acknowledged)."""
        try:
            return self._add(req, res)
        except Exception as exc:  # noqa: BLE001 - fail safe: not acknowledged, the node keeps serving
            return self._internal_error(AddIdentities.Response(), "add", exc)

    def on_remove(self, req: RemoveIdentities.Request, res: RemoveIdentities.Response) -> RemoveIdentities.Response:
        """Answer one removal; any unexpected failure becomes a bare ok=false (nothing acknowledged)."""
        try:
            return self._remove(req, res)
        except Exception as exc:  # noqa: BLE001 - fail safe: not acknowledged, the node keeps serving
            return self._internal_error(RemoveIdentities.Response(), "remove", exc)

    def _retrieve(self, req: RetrieveLatents.Request, res: RetrieveLatents.Response) -> RetrieveLatents.Response:
        """Eq. 1-2 for one identity vector (robot keys only), the query's own entry (or label) excluded."""
        t0 = now_ms()
        self.status.count("requests")
        opened = self._authenticate("retrieve", req, res, ("robot",))
        if opened is None:
            return res
        key_id = opened.key.key_id
        if self.store is None:
            return self._fail(res, opened, "retrieve", self.open_error)
        if not self.limiter.allow(key_id):
            return self._fail(res, opened, "retrieve",
                              f"rate limit: key {key_id!r} is above {self.limiter.rate:g} requests/s", "rate_limited")
        meta, arrays = opened.meta, opened.arrays
        mismatch = model_mismatch(self.store.built_with, {"generator": str(meta.get("generator", "")),
                                                          "reid": str(meta.get("reid", ""))},
                                  f"store {self.cfg.store.path!r}")
        if mismatch:
            return self._fail(res, opened, "retrieve", mismatch)
        try:
            m = int(meta.get("m", 0))
            exclude_id = int(meta.get("exclude_id", -1))
        except (TypeError, ValueError):
            return self._fail(res, opened, "retrieve", "m and exclude_id must be integers")
        if m < 1 or m > self.cfg.store.max_m:
            return self._fail(res, opened, "retrieve", f"m={m} out of range 1..{self.cfg.store.max_m}")
        query = arrays.get("identity", np.zeros(0, np.float32)).reshape(-1)
        exclude = exclude_id if exclude_id >= 0 else None
        try:
            with self._lock:
                got = retrieve(self.store, query, m, [exclude], [str(meta.get("exclude_label", "")) or None])
        except (RetrievalError, ValueError) as exc:
            return self._fail(res, opened, "retrieve", str(exc))
        lat = got.latents[0]
        ids = [int(i) for i in got.ids[0]]
        if not self._outcome("retrieve", key_id, ids, True, ""):
            return self._fail(res, opened, "retrieve", "audit trail unavailable: nothing is served unaudited",
                              "audit_errors")
        self._reply(res, opened, True, {"store_version": got.version},
                    {"latents": np.ascontiguousarray(lat, np.float32), "scores": np.asarray(got.scores[0], np.float32),
                     "ids": np.asarray(ids, np.int64)})
        self.status.latency("retrieve", now_ms() - t0)
        return res

    def _add(self, req: AddIdentities.Request, res: AddIdentities.Response) -> AddIdentities.Response:
        """Append identities durably (administrator keys only); the reply comes once the store acknowledged them."""
        self.status.count("add_requests")
        opened = self._authenticate("add", req, res, ("admin",))
        if opened is None:
            return res
        if self.store is None:
            return self._fail(res, opened, "add", self.open_error)
        store = self.store
        meta, arrays = opened.meta, opened.arrays
        try:
            n = int(meta.get("count", 0))
            if n < 1 or n > self.cfg.store.max_add:
                raise ValueError(f"count={n} out of range 1..{self.cfg.store.max_add}")
            vec = arrays.get("identities", np.zeros(0, np.float32)).reshape(-1)
            lat = arrays.get("latents", np.zeros(0, np.float32)).reshape(-1)
            if vec.dtype != np.float32 or lat.dtype != np.float32:
                raise ValueError("identities and latents must be float32")
            if vec.size != n * store.dim:
                raise ValueError(f"identities: expected {n}x{store.dim} values, got {vec.size}")
            if lat.size != n * store.num_ws * store.w_dim:
                raise ValueError(f"latents: expected {n}x{store.num_ws}x{store.w_dim} values, got {lat.size}")
            labels = [str(x) for x in meta.get("labels") or []] or None
            if labels is not None and len(labels) != n:
                raise ValueError(f"labels: expected {n}, got {len(labels)}")
            if labels is not None and max(len(x) for x in labels) > MAX_LABEL_CHARS:
                raise ValueError(f"labels: at most {MAX_LABEL_CHARS} characters each")
            with self._lock:
                ids = store.add(vec.reshape(n, store.dim), lat.reshape(n, store.num_ws, store.w_dim), labels)
        except OSError as exc:   # e.g. a full disk: the store rolled the add back, reads go on
            return self._fail(res, opened, "add", f"store {self.cfg.store.path!r} cannot write: {exc.strerror or exc}; "
                              "nothing of this request was stored (free disk space, then retry)")
        except (ValueError, RuntimeError, TypeError) as exc:
            return self._fail(res, opened, "add", str(exc))
        ids = [int(i) for i in ids]
        self._reply(res, opened, True, {"store_version": store.version, "size": len(store)},
                    {"ids": np.asarray(ids, np.int64)})
        self._outcome("add", opened.key.key_id, ids, True, "")
        self.status.set(DiagnosticStatus.OK, "serving", version=store.version)
        return res

    def _remove(self, req: RemoveIdentities.Request, res: RemoveIdentities.Response) -> RemoveIdentities.Response:
        """Erase entries by id and/or by identity label (administrator keys only); durable before the reply."""
        self.status.count("remove_requests")
        opened = self._authenticate("remove", req, res, ("admin",))
        if opened is None:
            return res
        if self.store is None:
            return self._fail(res, opened, "remove", self.open_error)
        store = self.store
        try:
            ids = {int(i) for i in opened.arrays.get("ids", np.zeros(0, np.int64)).reshape(-1)}
            labels = {str(x) for x in opened.meta.get("labels") or []}
            with self._lock:
                if labels:
                    list_ids = getattr(store, "ids", None)
                    if list_ids is None:
                        raise ValueError(f"removal by label is not supported by the {type(store).__name__} backend; "
                                         "remove by id")
                    live = [int(i) for i in list_ids()]
                    ids.update(i for i, lab in zip(live, store.get_labels(live)) if lab in labels)
                removed = sorted(ids)
                if removed:
                    store.remove(np.asarray(removed, np.int64))
        except OSError as exc:
            return self._fail(res, opened, "remove", f"store {self.cfg.store.path!r} cannot write: "
                              f"{exc.strerror or exc}; nothing was removed (free disk space, then retry)")
        except (ValueError, RuntimeError, TypeError) as exc:
            return self._fail(res, opened, "remove", str(exc))
        self._reply(res, opened, True, {"store_version": store.version, "size": len(store)},
                    {"ids": np.asarray(removed, np.int64)})
        self._outcome("remove", opened.key.key_id, removed, True, "")
        self.status.set(DiagnosticStatus.OK, "serving", version=store.version)
        return res


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros store_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(StoreNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
