"""Audit trail (issue 15.3) and retention (issue 15.4), all with injected clocks (no sleeps).

- every record is hash-chained: an edited, deleted or inserted record is found by ``audit verify``;
- ``audit show --since`` filters by time; the chain continues across restarts;
- retrieving the same entries at an abnormal rate is flagged, and the flag clears after the window;
- retention: entries past ``max_age_s`` are removed through ``remove`` (bytes gone, id gone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from latent_rag_ros.cli.store import register
from latent_rag_ros.store.audit import (
    AccessMonitor,
    AuditError,
    AuditTrail,
    parse_since,
    show_audit,
    verify_audit,
)
from latent_rag_ros.store.faiss_store import FaissStore


class Clock:
    """A settable clock (seconds) for the code under test."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, sub.add_parser("bench").add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _trail(path: Path, clock: Clock, n: int = 6) -> None:
    a = AuditTrail(path, clock=clock)
    for i in range(n):
        clock.t += 60
        a.record(["retrieve", "add", "remove"][i % 3], f"robot{i % 2}", [i, i + 10], ok=i != 4,
                 reason="" if i != 4 else "m out of range")
    a.close()


def _rewrite(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


@pytest.mark.parametrize("tamper", ["edit_ids", "edit_outcome", "delete_middle", "swap", "insert"])
def test_tampered_audit_log_is_detected(tmp_path: Path, tamper: str) -> None:
    log = tmp_path / "audit.log"
    _trail(log, Clock())
    assert verify_audit(log)["ok"] and verify_audit(log)["records"] == 6

    def edit(lines: list[str]) -> list[str]:
        recs = [json.loads(x) for x in lines]
        if tamper == "edit_ids":
            recs[2]["ids"] = [99]
        elif tamper == "edit_outcome":
            recs[4]["ok"] = True
        elif tamper == "delete_middle":
            del recs[3]
        elif tamper == "swap":
            recs[1], recs[2] = recs[2], recs[1]
        else:
            recs.insert(3, dict(recs[3]))
        return [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in recs]

    _rewrite(log, edit)
    report = verify_audit(log)
    assert not report["ok"] and "audit.log:" in report["errors"][0]
    assert _cli(["store", "audit", "verify", str(tmp_path), "--audit", str(log)]) == 1
    with pytest.raises(AuditError, match="chain is broken"):
        AuditTrail(log)  # a server never continues a broken chain


def test_deleted_last_records_are_detected_against_a_kept_head(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _trail(log, Clock())
    head = verify_audit(log)["head"]
    _rewrite(log, lambda lines: lines[:-2])
    assert verify_audit(log)["ok"]  # a shorter chain is still a chain...
    assert not verify_audit(log, expect_head=head)["ok"]  # ...but not the one whose head was kept
    assert _cli(["store", "audit", "verify", str(log), "--expect-head", head]) == 1


def test_chain_continues_across_restarts_and_show_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.log"
    clock = Clock()
    _trail(log, clock, n=3)
    t_mid = clock.t + 1
    _trail(log, clock, n=3)  # a new AuditTrail on the same file continues the chain
    report = verify_audit(log)
    assert report["ok"] and report["records"] == 6
    recent = show_audit(log, since=t_mid)
    assert [r["n"] for r in recent] == [3, 4, 5]
    assert [r["n"] for r in show_audit(log, action="add")] == [1, 4]
    assert [r["n"] for r in show_audit(log, entry=12)] == [2, 5]
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
    assert _cli(["store", "audit", "show", str(log), "--action", "remove"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["n"] for r in shown] == [2, 5] and shown[0]["key"] == "robot0"


def test_abnormal_retrieval_rate_is_flagged_and_clears() -> None:
    clock = Clock(0.0)
    mon = AccessMonitor(window_s=60, flag_count=100, clock=clock)
    for i in range(100):  # 100 retrievals of entry 5 in 50 s: at the limit, not above
        clock.t = i * 0.5
        assert mon.retrieved([5, 6 + i], key="robotA") == []
    assert mon.flagged() == []
    clock.t = 50.5
    assert mon.retrieved([5], key="robotB") == [5]  # the 101st within the window
    flags = mon.flagged()
    assert [f["id"] for f in flags] == [5] and flags[0]["count"] == 101 and flags[0]["last_key"] == "robotB"
    clock.t = 200.0  # a quiet window later the flag clears
    assert mon.flagged() == []
    assert AccessMonitor(flag_count=0).retrieved([1] * 5) == []  # 0 turns it off


def test_trail_feeds_the_monitor_and_reports_status(tmp_path: Path) -> None:
    clock = Clock(0.0)
    trail = AuditTrail(tmp_path / "a.log", monitor=AccessMonitor(window_s=10, flag_count=3, clock=clock),
                       clock=clock)
    for _ in range(4):
        trail.record("retrieve", "robot1", [7, 8], True)
    trail.record("retrieve", "robot1", [9], False, "rate limit")  # refused requests are not counted
    st = trail.status()
    assert st["audit_records"] == 5 and {f["id"] for f in st["flagged"]} == {7, 8}
    trail.close()
    assert verify_audit(tmp_path / "a.log")["head"] == st["audit_head"]


def test_retention_removes_expired_entries_through_erasure(tmp_path: Path) -> None:
    clock = Clock()
    s = FaissStore.create(tmp_path / "s", 16, 2, 4, clock=clock)
    rng = np.random.default_rng(0)
    s.add(rng.standard_normal((5, 16)), rng.standard_normal((5, 2, 4)), ["old"] * 5)
    clock.t += 3600
    s.add(rng.standard_normal((5, 16)), rng.standard_normal((5, 2, 4)), ["new"] * 5)
    old_bytes = [s.get_latents([i])[0].tobytes() for i in range(5)]
    assert s.expire(0).tolist() == []  # 0 = keep forever
    assert s.expire(7200).tolist() == []  # nothing is that old yet
    clock.t += 1800
    gone = s.expire(3600)  # the first five are 5400 s old, the others 1800 s
    assert gone.tolist() == [0, 1, 2, 3, 4] and len(s) == 5
    assert s.get_labels(s.ids()) == ["new"] * 5
    np.testing.assert_allclose(s.created_at([5]), [clock.t - 1800])
    data = b"".join(p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file())
    assert not any(b in data for b in old_bytes)  # removed by the erasure path: bytes gone
    s.close()
    s = FaissStore(tmp_path / "s", clock=clock)
    assert s.ids().tolist() == [5, 6, 7, 8, 9]
    s.close()
