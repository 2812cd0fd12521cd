"""The ant-colony path selector: adaptive, failure-aware, shares what it learns.

Pure code (no sockets): the client, the unit tests and ``scripts/simulate_routing.py`` run
exactly this. References: AntNet (Di Caro & Dorigo, 1998) for trip-time statistics and
relative reinforcement, Ant Colony System for the pseudo-random-proportional choice and
MAX–MIN Ant System for the pheromone bounds.

A chain is built hop by hop: at block boundary b the selector picks a node q serving b and
an end e within q's span, with probability ∝ τ[b][q]^α · η^β where

    η = 1 / (delay(q) + (e - b) · per_block(q) · load(q) + rest(e))

``load(q)`` is how much slower than idle a step on q runs: the slowdown q measured (its
decoding steps' time in the node over their compute; it reports it with every step and in its
record, and clients share what they heard), else 1 / (1 − busy(q)) with busy(q) the fraction of
recent time it spent computing, else 1 + penalty × active sessions. ``rest(e)`` is the
cheapest estimated cost from e to the end (a backward pass over the same cost model), so with
τ constant and pure exploitation the selector *is* shortest-latency routing. With
probability q0 it exploits: it takes the best candidate outright while that node's load is at
most ``herd_load`` (its steps barely wait, so clients that all pick it cost each other
nothing), else it draws two candidates and keeps the better ("best of two": clients that
share the same information do not all pile onto one busy node); otherwise it takes a single
proportional draw (exploration).

Learning: every K tokens a hop's observed time per block is compared to the best recent
time seen at that boundary; the ratio r ∈ (0, 1] is deposited: τ ← (1 − d)·τ + d·r.
Pheromone evaporates toward τ0 with a half-life in wall time, so a recovered node gets
tried again. A failed node's τ drops to τ_min and it is banned with exponential backoff.
Estimates of each node's per-block time and network delay come from the client's own
measurements blended with other clients' shared observations (robustly: a median over
publishers, clamped to a factor of the prior), never from their raw pheromone.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from swarmnode.errors import NoServersForBlocks, VerificationFailed
from swarmnode.records import NodeRecord, SwarmSnapshot
from swarmnode.routing.base import Hop, unmeasured_delay_s
from swarmnode.routing.shortest import DEFAULT_HOP_OVERHEAD_S, MIN_RPS, BanFeedback, Bans
from swarmnode.routing.stigmergy import (
    NodeEstimate,
    SharedView,
    aggregate,
    ewma,
    is_number,
    plausible_slowdown,
    publishable,
)

DECODE_TOKENS = 4  # steps with at most this many new tokens count as decoding steps
CLAIM_BUSY_MAX = 0.99  # the busy fraction a claim check believes at most (a 100x queue)


@dataclass(frozen=True)
class AcoParams:
    """Selector parameters; every one is also a ClientConfig field (``aco_<name>``)."""

    alpha: float = 1.0  # weight of pheromone: learned experience
    beta: float = 6.0  # weight of the latency heuristic: sharp, so exploring costs little at low load (sim)
    q0: float = 0.9  # probability of exploiting (below); 1 - q0 explores with a single draw
    # Exploiting takes the best candidate outright while its node's load is at most herd_load (its
    # steps barely wait, so clients that all pick it cost each other nothing), else the better of
    # two draws (clients sharing the same numbers do not all pile onto one busy node). < 1: never.
    herd_load: float = 1.5
    tau0: float = 0.5  # neutral pheromone: new and recovered nodes start here
    tau_min: float = 0.05  # MAX-MIN bounds keep every node choosable, none dominant forever
    tau_max: float = 1.0
    deposit: float = 0.3  # how far one reinforcement moves τ toward r
    half_life_s: float = 30.0  # evaporation toward τ0: a node that failed is retried after ~minutes
    reinforce_every: int = 8  # K: tokens per backward ant
    load_penalty: float = 0.5  # load(q) = 1 + penalty × active sessions (0 disables the load term)
    best_window: int = 64  # per-boundary samples kept for mean / variance / best
    estimate_decay: float = 0.3  # EWMA weight of a new measurement of a node's per-block time
    shared_weight: float = 0.5  # weight of other clients' observations vs our own
    shared_clamp: float = 10.0  # shared estimates are clamped to [prior / c, prior × c]
    shared_sessions_cap: int = 8  # one publisher's sessions on a node count at most this much
    busy_cap: float = 0.9  # load(q) = 1 / (1 - min(busy, cap)): a saturated node costs 10x, not infinitely
    busy_max_age_s: float = 15.0  # a busy fraction older than this is not used or shared
    # A node's claims (compute time, busy) are contradicted when the in-node time we measured
    # (round trip minus our own ping) exceeds claim_ratio × what they imply + claim_slack_s, in the
    # median of claim_windows windows of K tokens; the slack covers (de)serialization and event-loop
    # time, which no claim includes. A contradicted node is routed on our measurements alone, as
    # if its load were distrust_load (as if saturated: 1 / (1 - busy_cap)), for distrust_s: lying
    # about load must cost traffic, not win it. Honest nodes in bursts of queueing stay well
    # under 5x what their busy fraction implies (3x flagged honest nodes live under contention).
    claim_ratio: float = 5.0
    claim_slack_s: float = 0.025
    claim_windows: int = 3
    distrust_s: float = 120.0
    distrust_load: float = 10.0

    def __post_init__(self) -> None:
        checks = {
            "0 < tau_min <= tau0 <= tau_max": 0 < self.tau_min <= self.tau0 <= self.tau_max,
            "0 <= q0 <= 1": 0 <= self.q0 <= 1,
            "0 < deposit <= 1": 0 < self.deposit <= 1,
            "half_life_s > 0": self.half_life_s > 0,
            "reinforce_every >= 1": self.reinforce_every >= 1,
            "alpha, beta, load_penalty >= 0": min(self.alpha, self.beta, self.load_penalty) >= 0,
            "best_window >= 1": self.best_window >= 1,
            "0 < estimate_decay <= 1": 0 < self.estimate_decay <= 1,
            "0 <= shared_weight <= 1": 0 <= self.shared_weight <= 1,
            "shared_clamp >= 1": self.shared_clamp >= 1,
            "shared_sessions_cap >= 0": self.shared_sessions_cap >= 0,
            "0 <= busy_cap < 1": 0 <= self.busy_cap < 1,
            "busy_max_age_s > 0": self.busy_max_age_s > 0,
            "claim_ratio >= 1, claim_slack_s >= 0": self.claim_ratio >= 1 and self.claim_slack_s >= 0,
            "claim_windows >= 1, distrust_s >= 0": self.claim_windows >= 1 and self.distrust_s >= 0,
            "distrust_load >= 1": self.distrust_load >= 1,
            "herd_load >= 0": self.herd_load >= 0,
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise ValueError(f"invalid ant-colony parameters: need {', '.join(broken)}")


@dataclass
class _Pending:
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    compute: float = 0.0
    claimed: float = 0.0  # Σ compute / (1 − busy): the in-node time the node's reports imply
    in_node: float = 0.0  # Σ the node's own time per step (request decoded → answer built), where reported
    in_node_steps: int = 0


class AntColonyRouter:
    """Router policy ``"aco"`` (and, frozen, ``"shortest_load"``); see the module docstring."""

    def __init__(
        self,
        params: AcoParams = AcoParams(),
        *,
        learn: bool = True,
        use_load: bool = True,
        use_sharing: bool = True,
        use_busy: bool = True,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        bans: Bans | None = None,
        hop_overhead_s: float = DEFAULT_HOP_OVERHEAD_S,
        pings: dict[str, float] | None = None,
        publisher_id: str | None = None,
    ):
        self.params, self.learn, self.use_load, self.use_sharing = params, learn, use_load, use_sharing
        self.use_busy = use_busy  # load from nodes' busy fractions; False: from session counts only
        self.publisher_id = publisher_id  # our own key among shared observations: not read back as news
        self.rng = rng or random.Random()
        self.clock = clock
        self.bans = bans or Bans(clock=clock)
        self.hop_overhead_s = hop_overhead_s
        self.pings = pings if pings is not None else {}  # peer → measured round trip, before any step
        self.estimates: dict[str, NodeEstimate] = defaultdict(NodeEstimate)
        self.shared = SharedView()  # other clients' observations, aggregated
        self.held: Counter[str] = Counter()  # our own open sessions through each node
        self._tau: dict[tuple[int, str], tuple[float, float]] = {}  # (b, peer) → (τ, time of last update)
        self._boundary_times: dict[int, deque] = defaultdict(lambda: deque(maxlen=params.best_window))
        self._pending: dict[Hop, _Pending] = defaultdict(_Pending)
        self._backups: dict[Hop, list[Hop]] = {}
        self._claims: dict[str, deque] = {}  # peer → recent (measured in-node s, claimed s) per window
        self._last_choice: tuple[list[Hop], list[NodeRecord]] | None = None
        self._overhead_s: float | None = None  # overhead_beyond_ping_s(), until a delay or a ping changes

    # ---- pheromone -------------------------------------------------------------------------------
    def tau(self, boundary: int, peer_id: str) -> float:
        """τ[b][q] evaporated toward τ0 up to now."""
        value, at = self._tau.get((boundary, peer_id), (self.params.tau0, self.clock()))
        decay = 0.5 ** (max(0.0, self.clock() - at) / self.params.half_life_s)
        return self.params.tau0 + (value - self.params.tau0) * decay

    def _set_tau(self, boundary: int, peer_id: str, value: float) -> None:
        p = self.params
        self._tau[(boundary, peer_id)] = (min(p.tau_max, max(p.tau_min, value)), self.clock())

    # ---- cost model ------------------------------------------------------------------------------
    def trusts_claims(self, peer_id: str) -> bool:
        """False while the node's own reports (compute time, busy) stand contradicted by what we
        measured (see :meth:`_check_claims`)."""
        estimate = self.estimates.get(peer_id)
        return estimate is None or not estimate.contradicted(self.clock())

    def per_block_s(self, record: NodeRecord) -> float:
        own, shared = self.estimates.get(record.peer_id), self.shared.estimates.get(record.peer_id)
        if own is not None and own.in_node_s is not None and not self.trusts_claims(record.peer_id):
            return own.in_node_s  # what we saw it take, queueing included
        advertised = 1.0 / max(record.inference_rps, MIN_RPS)
        value = own.per_block_s if own is not None and own.per_block_s is not None else None
        if shared is not None and shared.per_block_s is not None:
            weight = self.params.shared_weight * (1.0 if value is None else 4 / (4 + own.samples))
            value = shared.per_block_s if value is None else (1 - weight) * value + weight * shared.per_block_s
        return advertised if value is None else value

    def delay_s(self, record: NodeRecord) -> float:
        """What a step through this node costs beyond its time in the node: what we measured
        (our step times minus the node's own reported time per step: network, serialization and
        the CPU a hop costs the client's host; its queueing is priced once, by :meth:`load`; for
        a node that reports no such time, minus its compute time, queueing included); else our
        ping of it plus what hops have cost us beyond their pings (:meth:`overhead_beyond_ping_s`,
        so that an untried node is not cheaper than it will be); else other clients' figure;
        else a default plus that overhead."""
        own = self.estimates.get(record.peer_id)
        if own is not None and own.delay_s is not None:
            return own.delay_s
        if record.peer_id in self.pings:
            return self.pings[record.peer_id] + self.overhead_beyond_ping_s()
        shared = self.shared.estimates.get(record.peer_id)
        if shared is not None and shared.delay_s is not None:
            return shared.delay_s
        return unmeasured_delay_s(record, self.hop_overhead_s) + self.overhead_beyond_ping_s()

    def overhead_beyond_ping_s(self) -> float:
        """What a step through a hop has cost us beyond the hop's ping, over the nodes we have
        measured (median): serialization, daemons and the client's own work, which grow when the
        client's host is loaded. Added to the ping of nodes we have not measured yet, so that an
        untried node, or a chain with more hops, is not taken for cheaper than the hops we know."""
        if self._overhead_s is None:
            extra = [
                max(0.0, e.delay_s - self.pings[q])
                for q, e in self.estimates.items()
                if e.delay_s is not None and q in self.pings
            ]
            self._overhead_s = statistics.median(extra) if extra else 0.0
        return self._overhead_s

    def sessions_on(self, record: NodeRecord) -> int:
        """Sessions through a node: what it last announced, or, if more, what clients report now
        (other clients' shared counts plus our own open sessions; records are up to an announce
        period old, our own count is exact)."""
        reported = self.shared.sessions.get(record.peer_id, 0) + self.held.get(record.peer_id, 0)
        return max(0, record.active_sessions, reported)

    def busy(self, record: NodeRecord) -> float | None:
        """The node's busy fraction: what it told us in a recent step, else what other clients
        heard recently (median), else its record (up to an announce period old); None if unknown."""
        own = self.estimates.get(record.peer_id)
        if own is not None and own.busy is not None and self.clock() - own.busy_at <= self.params.busy_max_age_s:
            return own.busy
        if record.peer_id in self.shared.busy:
            return self.shared.busy[record.peer_id]
        return record.busy if record.busy >= 0 else None

    def slowdown(self, record: NodeRecord) -> float | None:
        """The node's recent slowdown (time in node over compute time per decoding step, see
        swarmnode.server.busy.SlowdownMeter): what it told us in a recent step, else the median of
        what other clients heard recently, else its record; None if unknown."""
        own = self.estimates.get(record.peer_id)
        fresh = own is not None and self.clock() - own.slowdown_at <= self.params.busy_max_age_s
        if fresh and own.slowdown is not None:
            return own.slowdown
        if record.peer_id in self.shared.slowdown:
            return self.shared.slowdown[record.peer_id]
        return record.slowdown if record.slowdown >= 1.0 else None

    def load(self, record: NodeRecord) -> float:
        """How much slower than idle a step on this node runs: the slowdown it measured (its
        steps' time in node over their compute), else 1 / (1 - busy) (queueing grows like that
        with utilization when steps are served one at a time), else 1 + load_penalty × sessions."""
        if not self.use_load:
            return 1.0
        if not self.trusts_claims(record.peer_id):
            return self.params.distrust_load
        cap = 1.0 / (1.0 - self.params.busy_cap)
        slowdown = self.slowdown(record) if self.use_busy else None
        if slowdown is not None:
            return min(cap, slowdown)
        busy = self.busy(record) if self.use_busy else None
        if busy is None:
            return 1.0 + self.params.load_penalty * self.sessions_on(record)
        return 1.0 / (1.0 - min(self.params.busy_cap, busy))

    def hop_cost(self, record: NodeRecord, b: int, e: int) -> float:
        return self.delay_s(record) + (e - b) * self.per_block_s(record) * self.load(record)

    def _candidates(self, nodes: list[NodeRecord], b: int, end: int) -> list[tuple[NodeRecord, int]]:
        """(node, hop end) pairs at boundary b. A hop ends where the node's span ends or where
        another node's span starts: with costs linear in blocks, an optimal switch from one node
        to another happens at one of those points, and no chain splits a span for nothing."""
        starts = {r.start for r in nodes}
        pairs = []
        for r in nodes:
            if r.serves(b):
                last = min(r.end, end)
                pairs += [(r, e) for e in sorted({last} | {s for s in starts if b < s < last})]
        return pairs

    def _rest_costs(self, nodes: list[NodeRecord], start: int, end: int) -> dict[int, float]:
        """Cheapest estimated cost from each boundary to ``end`` (backward dynamic programming)."""
        rest = {end: 0.0}
        for b in range(end - 1, start - 1, -1):
            options = [self.hop_cost(r, b, e) + rest[e] for r, e in self._candidates(nodes, b, end) if e in rest]
            if options:
                rest[b] = min(options)
        return rest

    # ---- choosing --------------------------------------------------------------------------------
    def choose_chain(
        self,
        snapshot: SwarmSnapshot,
        start: int,
        end: int,
        *,
        exclude: frozenset[str] = frozenset(),
        greedy: bool = False,
    ) -> list[Hop]:
        """A chain over [start, end); ``greedy`` = pure exploitation (argmax, no draws)."""
        if self.use_sharing:
            self.absorb_shared(snapshot.shared)
        self._overhead_s = None  # pings may have been refreshed since
        excluded = exclude | self.bans.banned()
        nodes = [r for r in snapshot.live() if r.peer_id not in excluded]
        rest = self._rest_costs(nodes, start, end)
        if start not in rest:
            missing = [blk for blk in range(start, end) if not any(r.serves(blk) for r in nodes)]
            raise NoServersForBlocks(missing, snapshot.model_id, 0.0)
        chain, b = [], start
        while b < end:
            previous = chain[-1].peer_id if chain else None
            options = [(r, e) for r, e in self._candidates(nodes, b, end) if e in rest and r.peer_id != previous]
            options = options or [(r, e) for r, e in self._candidates(nodes, b, end) if e in rest]
            record, e = self._pick(options, b, rest, greedy)
            chain.append(Hop(record.peer_id, b, e))
            b = e
        self._last_choice = (chain, nodes)
        return chain

    def _score(self, record: NodeRecord, b: int, e: int, rest: dict[int, float]) -> float:
        eta = 1.0 / max(1e-9, self.hop_cost(record, b, e) + rest[e])
        return self.tau(b, record.peer_id) ** self.params.alpha * eta**self.params.beta

    def _pick(self, options, b: int, rest, greedy: bool):
        scores = [self._score(r, b, e, rest) for r, e in options]
        best = max(range(len(options)), key=lambda i: (scores[i], options[i][1]))  # ties: fewer hops
        if greedy:
            return options[best]
        if self.rng.random() < self.params.q0:
            if self.load(options[best][0]) <= self.params.herd_load:
                return options[best]
            first, second = self.rng.choices(range(len(options)), weights=scores, k=2)
            return options[first if scores[first] >= scores[second] else second]
        return options[self.rng.choices(range(len(options)), weights=scores, k=1)[0]]

    def _remember_backups(self, chain: list[Hop], nodes: list[NodeRecord]) -> None:
        """For each hop, the best chain over its span without its node: the failover plan."""
        if len(self._backups) > 1024:  # plans of long-gone chains
            self._backups.clear()
        for hop in chain:
            others = [r for r in nodes if r.peer_id != hop.peer_id]
            sub_rest = self._rest_costs(others, hop.start, hop.end)
            if hop.start not in sub_rest:
                continue
            backup, b = [], hop.start
            while b < hop.end:
                r, e = min(
                    ((r, e) for r, e in self._candidates(others, b, hop.end) if e in sub_rest),
                    key=lambda re: (self.hop_cost(re[0], b, re[1]) + sub_rest[re[1]], re[0].peer_id),
                )
                backup.append(Hop(r.peer_id, b, e))
                b = e
            self._backups[hop] = backup

    def backup(self, hop: Hop) -> list[Hop] | None:
        """The replacement for ``hop`` planned from what was known when its chain was chosen
        (None if there was none). Planned on first request: most hops never fail."""
        if hop not in self._backups and self._last_choice is not None and hop in self._last_choice[0]:
            self._remember_backups(self._last_choice[0], self._last_choice[1])
        return self._backups.get(hop)

    # ---- sessions ---------------------------------------------------------------------------------
    def hold(self, hops: list[Hop]) -> None:
        """A session of ours now runs through ``hops`` (counted in the load term and shared)."""
        self.held.update(hop.peer_id for hop in hops)

    def release(self, hops: list[Hop]) -> None:
        """A session of ours no longer runs through ``hops``."""
        self.held.subtract(hop.peer_id for hop in hops)
        self.held = +self.held  # drop zero and negative counts

    # ---- learning --------------------------------------------------------------------------------
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
        """A hop answered a step; every K decoding steps become a backward ant.

        Prompt steps (many tokens at once) are not learned from: their time per token says
        little about decoding, and mixing them in would make a node look several times faster.
        """
        self.bans.clear(hop.peer_id)
        if not self.learn:  # the frozen variant routes on advertised numbers only
            return
        if is_number(busy) and 0.0 <= busy <= 1.0:  # remote input
            estimate = self.estimates[hop.peer_id]
            estimate.busy, estimate.busy_at = busy, self.clock()
        slowdown = plausible_slowdown(slowdown)  # remote input
        if slowdown is not None:
            estimate = self.estimates[hop.peer_id]
            estimate.slowdown, estimate.slowdown_at = slowdown, self.clock()
        if tokens > DECODE_TOKENS:
            return
        pending = self._pending[hop]
        pending.tokens += tokens
        pending.steps += 1
        pending.seconds += seconds
        pending.compute += compute_seconds if compute_seconds is not None else 0.0
        if compute_seconds is not None:  # what the node's own reports say this step took in it
            pending.claimed += _claimed_in_node(compute_seconds, busy, slowdown)
        if is_number(node_seconds) and 0.0 <= node_seconds <= seconds:  # remote input
            pending.in_node += node_seconds
            pending.in_node_steps += 1
        if pending.tokens >= self.params.reinforce_every:
            per = max(1, pending.tokens)  # everything below is per token
            compute = (pending.compute / per) if compute_seconds else None
            # The node's own time, if every step reported it: what the round trip spent outside it.
            in_node = pending.in_node / per if pending.in_node_steps == pending.steps else None
            self._check_claims(hop, pending.seconds / per, pending.claimed / per if compute_seconds else None)
            self._reinforce(hop, pending.seconds / per, compute, in_node)
            del self._pending[hop]

    def _reinforce(
        self, hop: Hop, seconds_per_token: float, compute_per_token: float | None, in_node_per_token: float | None
    ) -> None:
        blocks = hop.end - hop.start
        estimate = self.estimates[hop.peer_id]
        decay = self.params.estimate_decay
        compute = compute_per_token if compute_per_token is not None else seconds_per_token
        per_block = max(1e-9, compute / blocks)
        estimate.per_block_s = ewma(estimate.per_block_s, per_block, decay)
        if compute_per_token is not None:
            # Outside the node where it reports its own time (its queueing is priced by load()),
            # else outside its compute. Never below our own ping of it: a node that overstates
            # its time cannot hide its distance.
            inside = compute_per_token if in_node_per_token is None else max(compute_per_token, in_node_per_token)
            outside = max(0.0, seconds_per_token - inside, self.pings.get(hop.peer_id, 0.0))
            estimate.delay_s = ewma(estimate.delay_s, outside, decay)
            self._overhead_s = None
        estimate.samples += 1
        normalized = seconds_per_token / blocks
        window = self._boundary_times[hop.start]
        window.append(normalized)
        r = min(window) / normalized  # relative to the best recent time at this boundary, in (0, 1]
        d = self.params.deposit
        self._set_tau(hop.start, hop.peer_id, (1 - d) * self.tau(hop.start, hop.peer_id) + d * r)

    def _check_claims(self, hop: Hop, seconds_per_token: float, claimed: float | None) -> None:
        """Hold the node's claims against our measurement: the in-node time we saw (step round
        trip minus our own ping) against what its reported compute time and load imply, step by
        step (see :func:`_claimed_in_node`: the slowdown the router prices it by, else the busy
        fraction's queueing model). Needs a ping:
        without one, network and node time cannot be told apart without believing the node."""
        ping = self.pings.get(hop.peer_id)
        if ping is None or claimed is None:
            return
        p, estimate, blocks = self.params, self.estimates[hop.peer_id], hop.end - hop.start
        measured = max(0.0, seconds_per_token - ping)
        estimate.in_node_s = ewma(estimate.in_node_s, measured / blocks, p.estimate_decay)
        estimate.unexplained_s = ewma(estimate.unexplained_s, measured - claimed, p.estimate_decay)
        window = self._claims.setdefault(hop.peer_id, deque(maxlen=p.claim_windows))
        window.append((measured, claimed))
        if len(window) < p.claim_windows:
            return
        seen, said = statistics.median(m for m, _ in window), statistics.median(c for _, c in window)
        # What no node's claims explain anywhere (a loaded client host, a starved CPU) is not
        # evidence against this one: the threshold rises with the other nodes' median.
        others = [e.unexplained_s for q, e in self.estimates.items() if q != hop.peer_id and e.unexplained_s]
        everywhere = max(0.0, statistics.median(others)) if others else 0.0
        if seen > p.claim_ratio * said + p.claim_slack_s + 2 * everywhere:
            estimate.misreports += 1
            estimate.distrusted_until = self.clock() + p.distrust_s
            window.clear()  # the next verdict needs fresh evidence

    def boundary_stats(self, boundary: int) -> dict[str, float]:
        """Mean, variance and best of the recent per-block hop times at ``boundary``."""
        window = list(self._boundary_times.get(boundary, ()))
        if not window:
            return {}
        return {"mean": statistics.fmean(window), "var": statistics.pvariance(window), "best": min(window)}

    def report_failure(self, hop: Hop, error: BaseException) -> None:
        """τ → τ_min at every boundary the node was used at, and a ban with backoff. A failed
        spot-check is also kept as a dispute, with its evidence, for the shared observations."""
        estimate = self.estimates[hop.peer_id]
        estimate.failures += 1
        if isinstance(error, VerificationFailed):
            estimate.disputes += 1
            estimate.evidence = str(error)
        for b, peer in list(self._tau):
            if peer == hop.peer_id:
                self._set_tau(b, peer, self.params.tau_min)
        self._set_tau(hop.start, hop.peer_id, self.params.tau_min)
        self.bans.ban(hop.peer_id)
        self._pending.pop(hop, None)

    # ---- stigmergy -------------------------------------------------------------------------------
    def observations(self) -> dict[str, dict]:
        """What this client measured, to share through the DHT (measurements, never pheromone):
        per node, its time per block, round trip, sample count, failures, our open sessions and
        the busy fraction it reported, if recent."""
        return publishable(self.estimates, self.held, self.clock(), self.params.busy_max_age_s)

    def absorb_shared(self, published: dict[str, dict]) -> None:
        """Take in other clients' observations (see :func:`swarmnode.routing.stigmergy.aggregate`)."""
        self.shared = aggregate(
            published,
            self.estimates,
            skip_publisher=self.publisher_id,
            clamp=self.params.shared_clamp,
            sessions_cap=self.params.shared_sessions_cap,
        )


def _claimed_in_node(compute_s: float, busy: float | None, slowdown: float | None) -> float:
    """The time in the node a step's reports imply: compute × slowdown where the node reported a
    slowdown (the load routers price it by, so the claim that is checked), else compute /
    (1 − busy), busy believed up to CLAIM_BUSY_MAX so that an honest saturated node is not taken
    for a liar."""
    if slowdown is not None:
        return compute_s * slowdown
    stated_busy = min(CLAIM_BUSY_MAX, busy) if is_number(busy) and 0.0 <= busy <= 1.0 else 0.0
    return compute_s / (1.0 - stated_busy)


class RandomRouter(BanFeedback):
    """Router policy ``"random"``: a uniformly random node at each boundary, to its span end."""

    def __init__(self, rng: random.Random | None = None, bans: Bans | None = None):
        self.rng = rng or random.Random()
        self.bans = bans or Bans()

    def choose_chain(
        self, snapshot: SwarmSnapshot, start: int, end: int, *, exclude: frozenset[str] = frozenset()
    ) -> list[Hop]:
        nodes = [r for r in snapshot.live() if r.peer_id not in exclude | self.bans.banned()]
        chain, b = [], start
        while b < end:
            options = [r for r in nodes if r.serves(b)]
            if not options:
                missing = [blk for blk in range(b, end) if not any(r.serves(blk) for r in nodes)]
                raise NoServersForBlocks(missing, snapshot.model_id, 0.0)
            record = self.rng.choice(options)
            chain.append(Hop(record.peer_id, b, min(record.end, end)))
            b = chain[-1].end
        return chain
