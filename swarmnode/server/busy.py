"""How busy a node is: the fraction of recent wall time it spent computing.

A node reports this with every step and in its DHT record. Routers use it as the load
signal: a node's queueing grows like 1 / (1 - busy), whatever the number of sessions
that keep it busy (one long span on a slow node loads it more than ten short ones on a
fast node).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# Short enough to follow load that changes within seconds (a burst of new sessions), long
# enough to span a few token cycles; 3 s beat 5 and 10 s in the routing simulator's churn
# and contention scenarios (docs/routing.md).
DEFAULT_WINDOW_S = 3.0


class BusyMeter:
    """The union of compute intervals over a sliding window; O(1) amortized per call.

    Intervals may overlap (a prompt in the compute thread while decoding steps run
    inline): they are merged, so the fraction never exceeds 1.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.perf_counter):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s, self.clock = window_s, clock
        self._spans: deque[list[float]] = deque()  # disjoint [start, end], in order
        self._total = 0.0  # summed length of _spans

    def add(self, started: float, ended: float) -> None:
        """Record that the node computed from ``started`` to ``ended`` (clock's time base)."""
        if ended <= started:
            return
        spans = self._spans
        while spans and spans[-1][1] >= started:  # overlaps or touches the newest spans: merge
            last = spans.pop()
            self._total -= last[1] - last[0]
            started, ended = min(started, last[0]), max(ended, last[1])
        spans.append([started, ended])
        self._total += ended - started

    def fraction(self) -> float:
        """Busy time within the last ``window_s`` seconds, as a fraction of the window."""
        low = self.clock() - self.window_s
        spans = self._spans
        while spans and spans[0][1] <= low:
            old = spans.popleft()
            self._total -= old[1] - old[0]
        busy = self._total - (max(0.0, low - spans[0][0]) if spans else 0.0)
        return min(1.0, max(0.0, busy / self.window_s))
