"""Per-client token-bucket rate limiting for the store service (no ROS imports).

Each client name gets a bucket of ``burst`` tokens refilled at ``rate_hz`` tokens per second; a
request spends one token or is refused. Client names are declared by the callers (rclpy does not
hand a service callback the caller's identity), so this limits well-behaved clients and slows a
scraper that reuses one name; the hard bound on what any single call returns is ``max_m``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by client name; ``rate_hz <= 0`` turns limiting off."""

    def __init__(self, rate_hz: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 4096) -> None:
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate_hz)
        self.burst = float(burst if burst is not None else max(1.0, self.rate))
        self.clock = clock
        self.max_clients = int(max_clients)
        self._buckets: dict[str, tuple[float, float]] = {}   # name -> (tokens, last refill time)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, client: str) -> bool:
        """Spend one token of ``client``'s bucket; False when it is empty (the request is refused)."""
        if not self.enabled:
            return True
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
            if len(self._buckets) > self.max_clients:   # forget the longest-idle clients (they refill to full)
                for name, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: len(self._buckets) // 2]:
                    del self._buckets[name]
            return ok
