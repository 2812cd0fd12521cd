"""Admission control: a node takes a new session only while it can still serve it well.

Two budgets, both checked when a session opens (never mid-session: an admitted session
keeps its room to the end):

- **KV cache** (:class:`swarmnode.server.cache.CacheManager`): the session's whole
  ``max_length`` is reserved up front; no room → ``CacheExhausted``.
- **Step time** (here): with continuous batching one decoding iteration serves every
  admitted session, so its time grows with their number. The node projects the iteration's
  time with one more session from its profile (:class:`StepCost`, measured at join) and
  refuses with ``NodeBusy`` (and a ``retry_after`` hint) when it would exceed ``max_step_s``.

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


@dataclass(frozen=True)
class Admission:
    """The step-time check of one node (see the module docstring)."""

    cost: StepCost
    blocks: int
    max_step_s: float

    def check(self, sessions: int) -> None:
        """Raise NodeAtCapacity (a NodeBusy) unless a session may join ``sessions`` already admitted. A node with no
        session always admits one (it can do no better by waiting)."""
        if sessions < 1:
            return
        projected = self.cost.iteration_s(sessions + 1, self.blocks)
        if projected > self.max_step_s:
            raise NodeAtCapacity(
                f"at capacity: {sessions} sessions; one more would make a decoding step "
                f"{1000 * projected:.0f} ms, above this node's target of {1000 * self.max_step_s:.0f} ms",
                retry_after=retry_after_s(projected, self.max_step_s),
            )
