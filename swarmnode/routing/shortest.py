"""Shortest-latency routing over advertised throughput (the Petals-style baseline).

Dijkstra over block boundaries: from boundary b, a node serving b can take the chain
to any boundary e within its span for ``hop_overhead + (e - b) / inference_rps``
seconds. Failed nodes are excluded for a ban period that doubles with each failure.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from swarmnode.errors import NoServersForBlocks
from swarmnode.records import SwarmSnapshot
from swarmnode.routing.base import Hop, unmeasured_delay_s

DEFAULT_HOP_OVERHEAD_S = 1e-3  # one RPC round trip when nothing better is known
MIN_RPS = 1e-3


@dataclass
class Bans:
    """Per-node bans with exponential backoff; ``clock`` is injectable for tests."""

    base_s: float = 2.0
    max_s: float = 120.0
    clock: object = time.monotonic
    _until: dict[str, float] = field(default_factory=dict)
    _strikes: dict[str, int] = field(default_factory=dict)

    def ban(self, peer_id: str) -> float:
        strikes = self._strikes.get(peer_id, 0) + 1
        self._strikes[peer_id] = strikes
        # The exponent is capped: a peer that fails a thousand times must not overflow the float.
        duration = min(self.max_s, self.base_s * 2.0 ** min(strikes - 1, 64))
        self._until[peer_id] = self.clock() + duration
        return duration

    def clear(self, peer_id: str) -> None:
        self._strikes.pop(peer_id, None)
        self._until.pop(peer_id, None)

    def banned(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(p for p, until in self._until.items() if until > now)


def shortest_chain(
    snapshot: SwarmSnapshot,
    start: int,
    end: int,
    exclude: frozenset[str] = frozenset(),
    hop_overhead_s: float = DEFAULT_HOP_OVERHEAD_S,
    pings: dict[str, float] | None = None,
) -> list[Hop]:
    """The chain over [start, end) with the least estimated latency (ties: fewer hops, then peer id)."""
    nodes = [r for r in snapshot.live() if r.peer_id not in exclude]
    best: dict[int, tuple[float, int]] = {start: (0.0, 0)}
    came_from: dict[int, Hop] = {}
    queue = [(0.0, 0, start)]
    while queue:
        cost, hops, b = heapq.heappop(queue)
        if b == end:
            break
        if (cost, hops) > best.get(b, (float("inf"), 0)):
            continue
        for record in sorted(nodes, key=lambda r: r.peer_id):
            if not record.serves(b):
                continue
            per_block = 1.0 / max(record.inference_rps, MIN_RPS)
            delay = (pings or {}).get(record.peer_id) or unmeasured_delay_s(record, hop_overhead_s)
            for e in range(b + 1, min(record.end, end) + 1):
                candidate = (cost + delay + (e - b) * per_block, hops + 1)
                if candidate < best.get(e, (float("inf"), 0)):
                    best[e] = candidate
                    came_from[e] = Hop(record.peer_id, b, e)
                    heapq.heappush(queue, (*candidate, e))
    if end not in came_from and start != end:
        # With sub-span hops a chain exists iff every block is served, so these are never empty.
        missing = [blk for blk in range(start, end) if not any(r.serves(blk) for r in nodes)]
        raise NoServersForBlocks(missing, snapshot.model_id, 0.0)
    chain, b = [], end
    while b != start:
        hop = came_from[b]
        chain.append(hop)
        b = hop.start
    return chain[::-1]


class BanFeedback:
    """Feedback for the policies that learn nothing: a failed node is banned (with backoff),
    an answer lifts its ban; step times and load are ignored."""

    bans: Bans

    def report_step(
        self,
        hop: Hop,
        seconds: float,
        tokens: int,
        compute_seconds: float | None = None,
        busy: float | None = None,
        slowdown: float | None = None,
        node_seconds: float | None = None,
    ) -> None:
        self.bans.clear(hop.peer_id)

    def report_failure(self, hop: Hop, error: BaseException) -> None:
        self.bans.ban(hop.peer_id)

    def hold(self, hops: list[Hop]) -> None:
        """Not used: this policy ignores load."""

    def release(self, hops: list[Hop]) -> None:
        """Not used: this policy ignores load."""


class ShortestPathRouter(BanFeedback):
    """Router policy ``"shortest"``: Dijkstra over advertised throughput, skipping banned nodes."""

    def __init__(
        self, hop_overhead_s: float = DEFAULT_HOP_OVERHEAD_S, bans: Bans | None = None, pings: dict | None = None
    ):
        self.hop_overhead_s = hop_overhead_s
        self.bans = bans or Bans()
        self.pings = pings if pings is not None else {}  # peer → measured round trip, seconds

    def choose_chain(
        self, snapshot: SwarmSnapshot, start: int, end: int, *, exclude: frozenset[str] = frozenset()
    ) -> list[Hop]:
        return shortest_chain(snapshot, start, end, exclude | self.bans.banned(), self.hop_overhead_s, self.pings)
