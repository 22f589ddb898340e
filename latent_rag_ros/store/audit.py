"""The store's audit trail: a hash-chained, append-only record of every retrieve, add and remove.

Each line of the audit file is one JSON record: sequence number ``n``, time ``t`` (UTC ISO and
epoch seconds), ``action`` (retrieve/add/remove/expire/rekey), ``key`` (the robot's key id or client
name), entry ``ids``, ``ok`` and ``reason``, ``prev`` (the previous record's hash) and ``hash`` =
SHA-256 over ``prev`` and the record's canonical JSON without ``hash``. :func:`verify_audit`
recomputes the chain, so an edited, inserted, reordered or deleted record breaks it at that line;
deleting records at the end is detected by comparing the head (``n`` and ``hash``, printed by
``latent-rag store audit verify``) with one kept elsewhere (``--expect-head``).

Records hold ids and key ids, never vectors, codes or labels. Writes are ``O_APPEND`` single
``write`` calls; add/remove/expire records are fsync'ed, retrieve records are not (they survive
a process crash, not a power cut), so auditing costs a retrieval no disk flush.

:class:`AccessMonitor` flags entries retrieved more than ``flag_count`` times within
``window_s`` seconds (a client harvesting one person's codes); the store node reports the flags
in its status. No ROS here: the node only calls :meth:`AuditTrail.record`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

GENESIS = hashlib.sha256(b"latent_rag_ros store audit trail v1").hexdigest()
DURABLE_ACTIONS = frozenset({"add", "remove", "expire", "rekey"})


class AuditError(RuntimeError):
    """The audit file cannot be read or continued (its chain is broken)."""


def _canonical(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(prev: str, rec: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the record (without its own ``hash``)."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    return hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, record or None when unparsable, raw line) for each line of an audit file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            raw = line.rstrip("\n")
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                rec = None
            yield i, rec if isinstance(rec, dict) else None, raw


def verify_audit(path: str | os.PathLike, expect_head: str | None = None) -> dict[str, Any]:
    """Recompute the chain; returns ``ok``, the number of records, the head hash and the errors."""
    errors: list[str] = []
    prev, n_expected, count = GENESIS, 0, 0
    p = Path(path)
    if not p.exists():
        return {"ok": False, "path": str(p), "records": 0, "head": None, "errors": [f"{p}: audit file not found"]}
    for line, rec, _ in read_records(p):
        if rec is None:
            errors.append(f"{p}:{line}: not a JSON record")
            break
        if rec.get("n") != n_expected:
            errors.append(f"{p}:{line}: record number {rec.get('n')}, expected {n_expected} (records deleted "
                          "or inserted)")
            break
        if rec.get("prev") != prev:
            errors.append(f"{p}:{line}: previous-hash link broken (a record before it was changed or deleted)")
            break
        if record_hash(prev, rec) != rec.get("hash"):
            errors.append(f"{p}:{line}: record hash does not match its content (record edited)")
            break
        prev, n_expected, count = rec["hash"], n_expected + 1, count + 1
    if not errors and expect_head and expect_head != prev:
        errors.append(f"{p}: head {prev[:16]}... differs from the expected {expect_head[:16]}... "
                      "(records at the end deleted, or another file)")
    return {"ok": not errors, "path": str(p), "records": count, "head": prev, "errors": errors}


def show_audit(path: str | os.PathLike, since: float | None = None, action: str | None = None,
               entry: int | None = None) -> list[dict[str, Any]]:
    """Records at or after ``since`` (epoch seconds), optionally of one action or touching one entry id."""
    out = []
    for _, rec, _ in read_records(path):
        if rec is None:
            continue
        if since is not None and float(rec.get("epoch", 0)) < since:
            continue
        if action and rec.get("action") != action:
            continue
        if entry is not None and entry not in (rec.get("ids") or []):
            continue
        out.append(rec)
    return out


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` values: an ISO date/time (UTC when no zone) or a duration back from now (``90s``, ``15m``,
    ``2h``, ``7d``); returns epoch seconds."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return now - float(t[:-1]) * units[t[-1]]
    try:
        d = _dt.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO time (2026-11-29T22:00) or a duration (15m, 2h, 7d)") \
            from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def audit_path_for(store: str | os.PathLike, configured: str = "") -> Path:
    """The audit file: ``configured`` when set, a given file as is, else ``audit.log`` in a store directory."""
    if configured:
        return Path(configured).expanduser()
    p = Path(store).expanduser()
    if p.is_dir():
        return p / "audit.log"
    if p.suffix == ".log" or p.suffix == ".jsonl":
        return p
    if p.suffix == ".db":  # Milvus Lite file: the trail sits next to it
        return p.with_name(p.name + ".audit.log")
    raise ValueError(f"{store}: no audit file for this store location; set store.audit_file (--audit FILE)")


class AccessMonitor:
    """Counts retrievals per entry in a sliding window and flags entries above ``flag_count``."""

    def __init__(self, window_s: float = 60.0, flag_count: int = 600, clock: Callable[[], float] = time.monotonic,
                 max_flags: int = 100) -> None:
        self.window_s = float(window_s)
        self.flag_count = int(flag_count)
        self.clock = clock
        self.max_flags = int(max_flags)
        self._hits: dict[int, deque[float]] = {}
        self._flags: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.flag_count > 0 and self.window_s > 0

    def retrieved(self, ids: Iterable[int], key: str = "") -> list[int]:
        """Count one retrieval of each id; returns the ids newly flagged by it."""
        if not self.enabled:
            return []
        now = self.clock()
        new = []
        with self._lock:
            for i in {int(x) for x in ids if int(x) >= 0}:
                q = self._hits.setdefault(i, deque())
                q.append(now)
                while q and q[0] < now - self.window_s:
                    q.popleft()
                if len(q) > self.flag_count:
                    if i not in self._flags:
                        new.append(i)
                    self._flags[i] = {"id": i, "count": len(q), "window_s": self.window_s, "last_key": key,
                                      "since": self._flags.get(i, {}).get("since", now)}
            if now - self._last_sweep > self.window_s:  # forget idle entries so memory stays bounded
                self._last_sweep = now
                for i in [i for i, q in self._hits.items() if not q or q[-1] < now - self.window_s]:
                    del self._hits[i]
                    self._flags.pop(i, None)
        return new

    def flagged(self) -> list[dict[str, Any]]:
        """Entries retrieved at an abnormal rate within the current window (highest counts first)."""
        now = self.clock()
        with self._lock:
            live = []
            for i, f in list(self._flags.items()):
                q = self._hits.get(i, deque())
                recent = sum(1 for t in q if t >= now - self.window_s)
                if recent > self.flag_count:
                    live.append({**f, "count": recent})
                else:
                    del self._flags[i]
        return sorted(live, key=lambda f: -f["count"])[: self.max_flags]


class AuditTrail:
    """Appends hash-chained records to an audit file (continuing its chain) and feeds the monitor."""

    def __init__(self, path: str | os.PathLike, monitor: AccessMonitor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.monitor = monitor or AccessMonitor()
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        report = verify_audit(self.path) if self.path.exists() else {"ok": True, "records": 0, "head": GENESIS}
        if not report["ok"]:
            raise AuditError(f"{self.path}: the audit chain is broken ({report['errors'][0]}); keep this file as "
                             "evidence, move it aside and start a new one")
        self._n, self._head = int(report["records"]), str(report["head"])
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.new_flags: list[int] = []  # entries the last retrieve record flagged for the first time

    @classmethod
    def for_store(cls, store_path: str | os.PathLike, audit_file: str = "", window_s: float = 60.0,
                  flag_count: int = 600) -> AuditTrail:
        """The trail of a store (``audit_file`` or audit.log in its directory) with its rate monitor."""
        return cls(audit_path_for(store_path, audit_file), AccessMonitor(window_s, flag_count))

    @property
    def head(self) -> tuple[int, str]:
        """(number of records, hash of the last one)."""
        return self._n, self._head

    def record(self, action: str, key: str, ids: Iterable[int], ok: bool, reason: str = "") -> dict[str, Any]:
        """Append one record; retrievals also feed the abnormal-rate monitor. Returns the record."""
        id_list = sorted({int(i) for i in ids if int(i) >= 0})
        self.new_flags = self.monitor.retrieved(id_list, key) if action == "retrieve" and ok else []
        with self._lock:
            now = float(self.clock())
            rec = {"n": self._n, "t": _iso(now), "epoch": round(now, 3), "action": str(action), "key": str(key),
                   "ids": id_list, "ok": bool(ok), "reason": str(reason)[:500], "prev": self._head}
            rec["hash"] = record_hash(self._head, rec)
            data = _canonical(rec) + b"\n"
            written = os.write(self._fd, data)
            if written != len(data):
                raise AuditError(f"{self.path}: short write ({written} of {len(data)} bytes); disk full?")
            if action in DURABLE_ACTIONS:
                os.fsync(self._fd)
            self._n += 1
            self._head = rec["hash"]
        return rec

    def status(self) -> dict[str, Any]:
        """Head of the chain and the entries flagged for abnormal retrieval rates."""
        return {"audit_records": self._n, "audit_head": self._head, "flagged": self.monitor.flagged()}

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
