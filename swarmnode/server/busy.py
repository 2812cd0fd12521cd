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


class SlowdownMeter:
    """How much longer than its own compute a decoding step spends in the node, recently.

    Each sample is a step's time in the node (waiting for the compute thread, gathering,
    running) over the time its forward ran: 1 for a step that never waited. The mean over a
    sliding window is the node's load signal, whatever its scheduling: for a node serving one
    step at a time it follows 1 / (1 - busy) (M/M/1: time in system over service time), while
    a node that batches stays near 1-2 while busy all the time, because steps arriving
    together share one forward instead of queueing behind each other. ``None`` until a step
    was seen in the window (an idle node: routers fall back to the busy fraction).
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.perf_counter):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s, self.clock = window_s, clock
        self._samples: deque[tuple[float, float]] = deque()  # (when, in-node time / compute time)
        self._total = 0.0

    def add(self, in_node_s: float, compute_s: float) -> None:
        """A decoding step spent ``in_node_s`` in the node, ``compute_s`` of it in its forward."""
        if compute_s <= 0 or in_node_s < 0:
            return
        sample = max(1.0, in_node_s / compute_s)
        self._samples.append((self.clock(), sample))
        self._total += sample

    def mean(self) -> float | None:
        """The mean slowdown over the last ``window_s`` seconds (None: no step in the window)."""
        low = self.clock() - self.window_s
        while self._samples and self._samples[0][0] <= low:
            self._total -= self._samples.popleft()[1]
        if not self._samples:
            self._total = 0.0
            return None
        return max(1.0, self._total / len(self._samples))
