"""Admission control: a node takes a new session only while it can still serve it well.

Two budgets, both checked when a session opens (never mid-session: an admitted session
keeps its room to the end):

- **KV cache** (:class:`swarmnode.server.cache.CacheManager`): the session's whole
  ``max_length`` is reserved up front; no room → ``CacheExhausted``.
- **Step time** (here): with continuous batching one decoding iteration serves every
  admitted session, so its time grows with their number. The node projects the iteration's
  time with one more session from its profile (:class:`StepCost`, measured at join) and
  refuses with ``NodeBusy`` (and a ``retry_after`` hint) when it would exceed ``max_step_s``.
  A node that serves one step at a time (batching off: ``--no-batching``, or a format whose
  batched rows change each other's results, such as int8) rarely sees every session's step at
  once: the steps arrive spread over each token's trip through the chain. Projecting the worst
  case there refuses sessions while the node is mostly idle, so such a node projects the mean
  step a newcomer would see instead: it measures how long each of its sessions stays away
  between steps (:class:`Returns`) and solves the closed queue they make with one more
  (:func:`closed_queue_step_s`). Sessions that never leave give the worst case back; until
  one session has been measured, it projects the worst case.

The default target: one second per token for the whole model, in proportion to this node's
share of the blocks. A second per token is where interactive use ends (Petals reports
about that for the largest models it serves, and users accept it for chat); a node holding
a quarter of the blocks may take a quarter of it. It never falls below four single-session
steps, so even a slow device admits several sessions. Both refusals are *retryable*: a
client treats them as load (another replica, or a wait), never as a failure.

All decisions here are pure functions of numbers, tested without a node.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmnode.errors import NodeAtCapacity

TOKEN_BUDGET_S = 1.0  # per token, for the whole model
MIN_SINGLE_STEPS = 4.0  # the target never falls below this many single-session steps
RETRY_AFTER_S = 2.0  # the hint's base: a few dozen tokens of the other sessions
MAX_RETRY_AFTER_S = 10.0  # sessions end at any time: never send a client away for long


@dataclass(frozen=True)
class StepCost:
    """Seconds per block of one decoding iteration: ``single_s`` for one session plus
    ``extra_s`` for each further session in the same iteration (batched: the marginal cost
    of a row; unbatched: a whole single step)."""

    single_s: float
    extra_s: float

    def __post_init__(self) -> None:
        if self.single_s <= 0 or self.extra_s < 0:
            raise ValueError("need single_s > 0 and extra_s >= 0")

    def iteration_s(self, sessions: int, blocks: int) -> float:
        """Projected time of one decoding iteration with ``sessions`` sessions over ``blocks`` blocks."""
        return blocks * (self.single_s + self.extra_s * max(0, sessions - 1))

    @classmethod
    def from_profile(cls, single_s: float, batch_s: float, batch: int, batching: bool) -> StepCost:
        """From a profile: one session's step (``single_s``) and a batched step of ``batch``
        sessions (``batch_s``), seconds per block. Without batching each session costs a step."""
        if not batching or batch < 2:
            return cls(single_s, single_s)
        return cls(single_s, max(0.0, batch_s - single_s) / (batch - 1))


def kv_budget(cache_tokens: int | None, max_session_length: int, default_tokens: int) -> tuple[int, int]:
    """(KV budget in tokens per block, session limit in tokens) that agree: by default the budget
    holds at least one session of the maximum length (a node that could never admit one would
    refuse it forever); a budget given below the limit lowers the limit to it."""
    if cache_tokens is None:
        return max(default_tokens, max_session_length), max_session_length
    return cache_tokens, min(max_session_length, cache_tokens)


def peer_share(budget: int, fraction: float, longest_session: int) -> int:
    """Block-tokens of KV cache one peer may hold: its ``fraction`` of the node's ``budget``,
    never below one session of the maximum length (``longest_session`` block-tokens, capped
    by the budget): a smaller share would make the session limit a lie."""
    return max(int(fraction * budget), min(longest_session, budget))


def default_max_step_s(blocks: int, num_blocks: int, cost: StepCost) -> float:
    """The step-time target of a node serving ``blocks`` of ``num_blocks`` blocks (module docstring)."""
    share = TOKEN_BUDGET_S * blocks / max(1, num_blocks)
    return max(share, MIN_SINGLE_STEPS * cost.iteration_s(1, blocks))


def retry_after_s(projected_s: float, max_step_s: float) -> float:
    """The hint sent with a refusal: longer the further past its target the node would be."""
    return min(MAX_RETRY_AFTER_S, RETRY_AFTER_S * max(1.0, projected_s / max_step_s))


class Returns:
    """When one session comes back to a node: the average gap between the node's answer to
    one of its steps and the arrival of its next (its time in the rest of the chain, in the
    client, or idle), and when it was last answered. Fed by the node as steps come and go."""

    WEIGHT = 0.3  # of the newest gap: follows a session that slows down or pauses within a few steps

    __slots__ = ("answered_at", "gap_s")

    def __init__(self) -> None:
        self.answered_at: float | None = None
        self.gap_s: float | None = None

    def arrived(self, now: float) -> None:
        """A step of the session arrived at ``now``."""
        if self.answered_at is not None:
            gap = max(0.0, now - self.answered_at)
            self.gap_s = gap if self.gap_s is None else (1 - self.WEIGHT) * self.gap_s + self.WEIGHT * gap
            self.answered_at = None  # a step in the node: not away

    def answered(self, now: float) -> None:
        """The node answered the session's step at ``now``."""
        self.answered_at = now

    def away_s(self, now: float) -> float | None:
        """Its time away between steps (None: not measured yet); at least as long as its current absence."""
        if self.gap_s is None:
            return None
        return max(self.gap_s, now - self.answered_at) if self.answered_at is not None else self.gap_s


@dataclass(frozen=True)
class Load:
    """What a node measured of the sessions it holds: each one's time away between its steps
    (:class:`Returns`; None: not measured yet)."""

    away_s: tuple[float | None, ...]


def closed_queue_step_s(service_s: float, away_s: list[float]) -> list[float]:
    """Mean time each session's step spends in a node that serves fixed-length steps of
    ``service_s`` one at a time, each session coming back ``away_s[i]`` seconds after its last
    answer: a closed queue, solved by approximate mean value analysis (Bard-Schweitzer: a step
    waits for the steps of the other sessions in the node, each there a fraction R/(R+Z) of
    the time). Exact at the extremes: sessions never away wait for all the others (the
    worst case); sessions always away never wait."""
    if any(a < 0 for a in away_s) or service_s <= 0:
        raise ValueError("need service_s > 0 and away times >= 0")
    times = [service_s] * len(away_s)
    if not times:
        return times
    for _ in range(200):
        present = [r / (r + z) for r, z in zip(times, away_s, strict=True)]
        total = sum(present)
        new = [service_s * (1.0 + total - q) for q in present]
        if max(abs(a - b) for a, b in zip(new, times, strict=True)) < 1e-6 * service_s:
            return new
        times = [(a + b) / 2 for a, b in zip(new, times, strict=True)]  # damped: undamped, it can oscillate
    return times


@dataclass(frozen=True)
class Admission:
    """The step-time check of one node (see the module docstring). ``queued``: the node serves
    one decoding step at a time, and projects from its sessions' measured :class:`Load`."""

    cost: StepCost
    blocks: int
    max_step_s: float
    queued: bool = False

    def projected_step_s(self, sessions: int, load: Load | None = None) -> float:
        """A decoding step's projected time with one more session than ``sessions``: for a
        node that queues and has measured its sessions, the newcomer's mean step in the
        closed queue they make (sessions not measured yet, the newcomer included, taken to stay
        away as long as the median of those measured); else one iteration serving them all."""
        known = sorted(a for a in load.away_s if a is not None) if self.queued and load is not None else []
        if not known:
            return self.cost.iteration_s(sessions + 1, self.blocks)
        typical = known[len(known) // 2]
        away = [a if a is not None else typical for a in load.away_s[:sessions]]
        away += [typical] * (sessions + 1 - len(away))
        return closed_queue_step_s(self.cost.iteration_s(1, self.blocks), away)[-1]

    def check(self, sessions: int, load: Load | None = None) -> None:
        """Raise NodeAtCapacity (a NodeBusy) unless a session may join ``sessions`` already admitted. A node with no
        session always admits one (it can do no better by waiting)."""
        if sessions < 1:
            return
        projected = self.projected_step_s(sessions, load)
        if projected <= self.max_step_s:
            return
        raise NodeAtCapacity(
            f"at capacity: {sessions} sessions; one more would make a decoding step "
            f"{1000 * projected:.0f} ms, above this node's target of {1000 * self.max_step_s:.0f} ms",
            retry_after=retry_after_s(projected, self.max_step_s),
        )
