"""Stigmergy: what clients tell each other about nodes through the DHT, as pure functions.

Each client publishes, per node, what it measured (time per block, round trip, samples,
failures), how many of its sessions run through the node and the busy fraction the node
reported to it recently: measurements, never pheromone. Readers aggregate robustly: one
vote per publisher and the median for measurements, each publisher's session count capped,
their own publication and every malformed entry skipped (this is remote input).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from swarmnode.records import MAX_SLOWDOWN

MAX_EVIDENCE = 200  # characters of a dispute's description that are published


@dataclass
class NodeEstimate:
    """What one client believes about one node."""

    per_block_s: float | None = None  # compute time per block per token
    delay_s: float | None = None  # network round trip
    samples: int = 0
    failures: int = 0
    busy: float | None = None  # the node's busy fraction, as it last reported it
    busy_at: float = 0.0  # when (the client's clock)
    slowdown: float | None = None  # the node's time in node / compute per decoding step, as it reported it
    slowdown_at: float = 0.0
    disputes: int = 0  # spot-checks that found this node's output wrong
    evidence: str = ""  # the latest of them, in words (which step, which replicas, how far off)
    in_node_s: float | None = None  # measured round trip minus measured ping, per block per token
    unexplained_s: float | None = None  # per step: that in-node time minus what its claims imply
    misreports: int = 0  # times its claims (compute time, busy) were contradicted by measurement
    distrusted_until: float = 0.0  # until then its claims are ignored and it counts as saturated

    def contradicted(self, now: float) -> bool:
        """Whether the node's claims stand contradicted by measurement at ``now``."""
        return now < self.distrusted_until


@dataclass(frozen=True)
class SharedView:
    """Other clients' observations, aggregated per node."""

    estimates: dict[str, NodeEstimate] = field(default_factory=dict)  # medians, clamped to our priors
    sessions: dict[str, int] = field(default_factory=dict)  # open sessions, summed, capped per publisher
    busy: dict[str, float] = field(default_factory=dict)  # median of recent busy fractions
    # Publishers whose spot-checks found the node wrong. Informational: one client's word never
    # bans a node for others; only the publishing client stops using it.
    disputed_by: dict[str, int] = field(default_factory=dict)
    slowdown: dict[str, float] = field(default_factory=dict)  # median of recent slowdowns


def publishable(
    estimates: Mapping[str, NodeEstimate], held: Mapping[str, int], now: float, busy_max_age_s: float
) -> dict[str, dict]:
    """The observations one client publishes: every node it measured, saw fail, holds
    sessions on or heard a recent busy fraction from."""
    shared = {}
    for peer in set(held) | set(estimates):
        e = estimates.get(peer, NodeEstimate())
        busy_fresh = e.busy is not None and now - e.busy_at <= busy_max_age_s
        slowdown_fresh = e.slowdown is not None and now - e.slowdown_at <= busy_max_age_s
        if not (e.samples or e.failures or busy_fresh or slowdown_fresh or held.get(peer) or e.disputes):
            continue
        contradicted = e.contradicted(now) and e.in_node_s is not None
        shared[peer] = {
            # A node whose claims we caught out: what we measured, not what its claims made of it.
            "per_block_s": e.in_node_s if contradicted else e.per_block_s,
            "delay_s": e.delay_s,
            "samples": e.samples,
            "failures": e.failures,
            "sessions": held.get(peer, 0),
        }
        if busy_fresh and not contradicted:
            shared[peer]["busy"] = e.busy
        if slowdown_fresh and not contradicted:
            shared[peer]["slowdown"] = e.slowdown
        if e.disputes:
            shared[peer].update(disputes=e.disputes, evidence=e.evidence[:MAX_EVIDENCE])
    return shared


def aggregate(
    published: Mapping[str, object],
    priors: Mapping[str, NodeEstimate],
    *,
    skip_publisher: str | None,
    clamp: float,
    sessions_cap: int,
) -> SharedView:
    """Aggregate ``published`` (publisher → its observations). Time estimates are the median
    over publishers, clamped to [prior / clamp, prior × clamp] where we have a prior."""
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sessions: Counter[str] = Counter()
    busy: dict[str, list[float]] = defaultdict(list)
    slowdown: dict[str, list[float]] = defaultdict(list)
    disputed_by: Counter[str] = Counter()
    for publisher, observations in published.items():
        if publisher == skip_publisher or not isinstance(observations, dict):
            continue
        for peer, obs in observations.items():
            if not isinstance(obs, dict):
                continue
            for name in ("per_block_s", "delay_s"):
                if is_positive_number(obs.get(name)):
                    times[peer][name].append(float(obs[name]))
            if is_positive_number(obs.get("sessions")):
                sessions[peer] += min(sessions_cap, int(obs["sessions"]))
            if is_number(obs.get("busy")) and 0.0 <= obs["busy"] <= 1.0:
                busy[peer].append(float(obs["busy"]))
            if (reported := plausible_slowdown(obs.get("slowdown"))) is not None:
                slowdown[peer].append(reported)
            if is_positive_number(obs.get("disputes")):
                disputed_by[peer] += 1  # one vote per publisher, however many disputes it claims
    estimates = {}
    for peer, values in times.items():
        estimate = NodeEstimate(samples=len(values.get("per_block_s", ())))
        prior = priors.get(peer)
        for name, samples in values.items():
            value = statistics.median(samples)
            anchor = getattr(prior, name) if prior is not None else None
            if anchor:
                value = min(anchor * clamp, max(anchor / clamp, value))
            setattr(estimate, name, value)
        estimates[peer] = estimate
    busy_median = {peer: statistics.median(v) for peer, v in busy.items()}
    slowdown_median = {peer: statistics.median(v) for peer, v in slowdown.items()}
    return SharedView(estimates, dict(sessions), busy_median, dict(disputed_by), slowdown_median)


def ewma(previous: float | None, sample: float, weight: float) -> float:
    """An exponentially weighted moving average: ``sample`` alone when there is no ``previous``."""
    return sample if previous is None else (1 - weight) * previous + weight * sample


def is_number(value: object) -> bool:
    """A finite int or float (not a bool): what a number in remote input must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plausible_slowdown(value: object) -> float | None:
    """A node's reported slowdown as a float, or None when it is not one (a step never takes less
    than its compute, and beyond MAX_SLOWDOWN it is nonsense, not load)."""
    return float(value) if is_number(value) and 1.0 <= value <= MAX_SLOWDOWN else None


def is_positive_number(value: object) -> bool:
    return is_number(value) and value > 0
