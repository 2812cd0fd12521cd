"""How big a decoding batch runs, and when: pure functions over the node's measured step costs.

Two decisions, both from :meth:`BlockBackend.profile_batch_sizes` (seconds per block of a
decoding step of 1..16 sessions, measured at join):

- :func:`padding_plan`: the rows a batch of n sessions runs with. On this project's 2-core CPU
  a block's GEMMs take longer for 2 or 3 rows than for 4 (7.3 and 9.6 ms against 6.3 ms at
  hidden 1024), so a batch of 2-3 runs padded to 4 with empty rows.
- :func:`gather_wait`: whether to start an iteration now or wait a little for steps that are
  about to arrive. In a chain of nodes each session's next step comes back one round trip after
  its last one left, so a node that starts whenever anything waits keeps running small, costly
  batches while the other sessions are in flight (at 8 sessions over 2 nodes: batches of ~2.2).
  Waiting for steps predicted to arrive pays when the bigger batch serves more steps per second,
  counting the wait, than starting now; waits are bounded (the scheduler allows two single
  steps' time), so a mispredicted session costs little.

:class:`ArrivalModel` predicts arrivals: per session, the gap between the node returning a step
and that session's next step arriving (its round trip through the rest of the chain and the
client), smoothed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

# A batch is padded only where the measured saving beats profiling noise (repeats of one size
# vary by a few percent).
PAD_MARGIN = 0.1
GAP_SMOOTHING = 0.3  # weight of the newest gap in a session's running estimate
# A session with no step for this long has stopped (or is prefilling elsewhere): not expected.
IDLE_AFTER_S = 2.0


def padding_plan(costs: Sequence[float], margin: float = PAD_MARGIN) -> tuple[int, ...]:
    """Rows to run a batch of n sessions with, for n = 1..len(costs), from ``costs[k]``: the
    measured time of a batched step of k + 1 rows. A batch is padded to the cheapest measured
    size at or above n (the smallest among equals) if that is more than ``margin`` cheaper than
    n rows; sizes beyond the measured ones run as they are."""
    if any(c <= 0 for c in costs):
        raise ValueError("step costs must be positive")
    plan = []
    for n in range(1, len(costs) + 1):
        best = min(range(n, len(costs) + 1), key=lambda rows: (costs[rows - 1], rows))
        plan.append(best if costs[best - 1] < (1 - margin) * costs[n - 1] else n)
    return tuple(plan)


def batch_cost(costs: Sequence[float], plan: Sequence[int]) -> Callable[[int], float]:
    """Seconds per block of a batch of n sessions, as it runs (padded by ``plan``); beyond the
    measured sizes, extrapolated from the last two."""
    if len(costs) < 2 or len(plan) != len(costs):
        raise ValueError("need costs of at least 1 and 2 rows, and a plan of the same length")
    slope = max(0.0, costs[-1] - costs[-2])

    def cost(sessions: int) -> float:
        if sessions <= len(costs):
            return costs[plan[sessions - 1] - 1]
        return costs[-1] + slope * (sessions - len(costs))

    return cost


def gather_wait(
    waiting: int, arrivals: Sequence[float], iteration_s: Callable[[int], float], max_wait_s: float
) -> tuple[float, int]:
    """(Seconds to wait, steps to wait for) before starting an iteration with ``waiting`` steps;
    ``(0, 0)`` means start now.

    ``arrivals``: seconds from now until each expected session's next step (only those due
    within ``max_wait_s`` count; an overdue one, negative, counts as due now: round trips
    jitter, and the caller's wait is bounded anyway); ``iteration_s(n)``: how long an
    iteration of n steps takes. Waiting for the first i expected steps is chosen when that
    serves the most steps per second of waiting plus computing,
    ``(waiting + i) / (wait_i + iteration_s(waiting + i))``; ties start sooner. (Measured
    against a rule that minimizes the time to finish every known step, this one gave the higher
    throughput: 79 against 74 tokens/s at 8 sessions, docs/throughput.md.)"""
    due = sorted(max(0.0, a) for a in arrivals if -max_wait_s <= a <= max_wait_s)
    if not waiting:
        return 0.0, 0

    def rate(i: int) -> float:
        return (waiting + i) / ((due[i - 1] if i else 0.0) + iteration_s(waiting + i))

    best = max(range(len(due) + 1), key=lambda i: (rate(i), -i))
    return (due[best - 1], best) if best else (0.0, 0)


class ArrivalModel:
    """Predicts when each decoding session's next step will arrive (not thread-safe: one owner).

    Keys are anything hashable that stands for a session on this node (its cache object)."""

    def __init__(self, smoothing: float = GAP_SMOOTHING, idle_after_s: float = IDLE_AFTER_S):
        self.smoothing, self.idle_after_s = smoothing, idle_after_s
        self._returned: dict[Hashable, float] = {}  # when its last step's output was ready
        self._gap: dict[Hashable, float] = {}  # smoothed returned → next arrival

    def arrived(self, session: Hashable, now: float) -> None:
        """A step of ``session`` was queued at ``now``."""
        returned = self._returned.pop(session, None)
        if returned is None:
            return
        gap = max(0.0, now - returned)
        if now - returned > self.idle_after_s:  # a pause (a new turn), not a round trip
            return
        old = self._gap.get(session)
        self._gap[session] = gap if old is None else (1 - self.smoothing) * old + self.smoothing * gap

    def returned(self, session: Hashable, now: float) -> None:
        """A step of ``session`` finished at ``now``: its next one is expected one gap later."""
        self._returned[session] = now

    def expected(self, now: float) -> list[float]:
        """Seconds from ``now`` until each expected session's next step (negative: overdue).
        Sessions whose last step was long ago are forgotten."""
        out = []
        for session, returned in list(self._returned.items()):
            if now - returned > self.idle_after_s:
                del self._returned[session]
                self._gap.pop(session, None)
            elif session in self._gap:
                out.append(returned + self._gap[session] - now)
        return out
