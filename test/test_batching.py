"""The protector node's micro-batching window (core/batching.py) on an injected clock: no wall time."""

from __future__ import annotations

import random

import pytest

from latent_rag_ros.core.batching import BatchWindow


class FakeClock:
    """Milliseconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _simulate(max_batch: int, max_wait: float, arrivals: list[tuple[float, int]], busy_ms: float = 0.0):
    """An idle-when-waiting consumer: sleeps wait_s() or until the next frame; returns (item, held ms) per item."""
    clock = FakeClock()
    win = BatchWindow(max_batch, max_wait, clock)
    arrived: dict[int, float] = {}
    held: list[tuple[int, float]] = []
    batches: list[list[int]] = []
    pending = list(arrivals)
    next_id = 0
    while pending or len(win):
        if pending and pending[0][0] <= clock.t:
            _, n = pending.pop(0)
            ids = list(range(next_id, next_id + n))
            next_id += n
            for i in ids:
                arrived[i] = clock.t
            win.add(ids)
        while win.ready():
            batch = win.take()
            batches.append(batch)
            held += [(i, clock.t - arrived[i]) for i in batch]
            clock.t += busy_ms           # protecting the batch
        wake = clock.t + win.wait_s(idle_s=1e9) * 1e3
        if pending:
            wake = min(wake, max(pending[0][0], clock.t))
        clock.t = wake
    return held, batches, next_id


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_batch,max_wait", [(8, 50.0), (4, 5.0), (1, 30.0), (16, 0.0)])
def test_an_idle_consumer_never_holds_a_crop_past_the_limit(seed: int, max_batch: int, max_wait: float) -> None:
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(60):
        t += rng.choice([0.0, 0.5, 3.0, 17.0, 40.0, 120.0])
        arrivals.append((t, rng.randint(1, 10)))
    held, batches, total = _simulate(max_batch, max_wait, arrivals)
    assert sorted(i for i, _ in held) == list(range(total)), "every crop leaves exactly once"
    assert [i for i, _ in held] == list(range(total)), "first in, first out"
    assert max(h for _, h in held) <= max_wait
    assert all(1 <= len(b) <= max_batch for b in batches)


def test_a_full_batch_leaves_at_once_and_a_lone_crop_at_its_deadline() -> None:
    held, batches, _ = _simulate(4, 50.0, [(0.0, 4), (100.0, 1)])
    assert batches == [[0, 1, 2, 3], [4]]
    assert dict(held) == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 50.0}


def test_frames_arriving_within_the_window_share_a_batch() -> None:
    held, batches, _ = _simulate(8, 30.0, [(0.0, 2), (10.0, 3), (25.0, 1), (200.0, 1)])
    assert batches == [[0, 1, 2, 3, 4, 5], [6]]
    assert max(h for _, h in held) == 30.0


def test_a_busy_consumer_gets_overdue_crops_oldest_first() -> None:
    clock = FakeClock()
    win = BatchWindow(3, 10.0, clock)
    win.add(["a", "b"])
    clock.t = 5.0
    assert not win.ready() and win.wait_s(1.0) == pytest.approx(0.005)
    clock.t = 500.0                  # the consumer was protecting another batch meanwhile
    win.add(["c", "d"])
    assert win.ready() and win.wait_s(1.0) == 0.0
    assert win.take() == ["a", "b", "c"] and win.take() == ["d"] and len(win) == 0
    assert win.wait_s(0.2) == 0.2 and not win.ready()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchWindow(0, 10.0, FakeClock())
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchWindow(4, -1.0, FakeClock())
