"""Per-peer token buckets: how often each peer may be listened to (pure, clock-injected)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """``allow(peer)`` is True while ``peer`` stays within ``rate`` events/s (bursts up to ``burst``).

    At most ``max_peers`` buckets are kept (the least recently used go first), so a flood of
    made-up peer ids cannot grow it without bound.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, max_peers: int = 4096):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst, self.clock, self.max_peers = rate, burst, clock, max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer → (tokens, last refill)

    def allow(self, peer: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self._buckets[peer] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed
