"""Micro-batching window of the protector: wait at most ``max_wait_ms`` to fill a batch of ``max_batch`` crops.

ROS-free and clock-injected (``clock()`` returns milliseconds), so its guarantee is testable without wall
time: a consumer that sleeps at most ``wait_s()`` between checks and takes a batch whenever ``ready()``
never leaves a crop in the window longer than ``max_wait_ms`` after it arrived. Time the consumer spends
protecting an earlier batch is not the window's: crops arriving meanwhile are released as soon as it asks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any


class BatchWindow:
    """FIFO of (arrival time, item); a batch is ready when full or when its oldest item reaches its deadline."""

    def __init__(self, max_batch: int, max_wait_ms: float, clock: Callable[[], float]) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"batch window needs max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.max_batch, self.max_wait_ms, self.clock = int(max_batch), float(max_wait_ms), clock
        self._items: deque[tuple[float, Any]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[Any]) -> None:
        """Queue items that arrived now (one frame's crops)."""
        now = self.clock()
        self._items.extend((now, it) for it in items)

    def deadline_ms(self) -> float | None:
        """Clock time at which the oldest waiting item must leave; None when empty."""
        return self._items[0][0] + self.max_wait_ms if self._items else None

    def ready(self) -> bool:
        """True when a full batch waits or the oldest item has reached its deadline."""
        if len(self._items) >= self.max_batch:
            return True
        deadline = self.deadline_ms()
        return deadline is not None and self.clock() >= deadline

    def wait_s(self, idle_s: float) -> float:
        """How long the consumer may sleep: ``idle_s`` when empty, else the time left to the deadline (>= 0)."""
        deadline = self.deadline_ms()
        if deadline is None:
            return idle_s
        return max(0.0, min(idle_s, (deadline - self.clock()) / 1e3))

    def take(self) -> list[Any]:
        """The oldest ``max_batch`` items (fewer when fewer wait), removed from the window."""
        n = min(self.max_batch, len(self._items))
        return [self._items.popleft()[1] for _ in range(n)]
