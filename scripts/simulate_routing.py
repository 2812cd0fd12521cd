"""Discrete-event simulation of the routing policies, driving the real swarmnode.routing code.

A swarm of 20-60 nodes over 32-80 blocks, spans placed by the real ``--blocks auto`` code
(``swarmnode.server.block_selection``), per-block speeds 1:2:6, client-node round trips of 5-250
ms, FIFO service at every node (so latency grows with concurrent sessions; ``--batching``: nodes
batch the decoding steps waiting together into one forward, as ours do), sessions arriving as
a Poisson process from several clients, each client with its own router. Scenarios: ``static-
low``, ``contention``, ``gray`` (a popular node becomes 5x slower without any error), ``churn``
(crashes and rejoins; a dead node stays advertised ONLINE until gossip declares it dead, 3 s
later), ``departures`` (nodes leave for good and the rest rebalance their spans with the real
decision rule, ``block_selection.plan_move``). As in the real system, every node runs the real
busy meter (``swarmnode.server.busy``) and reports its busy fraction with every step, a node re-
announces its record (session count and busy fraction included) every 10 s, clients re-read the
DHT every 2 s and publish observations every 5 s, and a node advertises the throughput a start-
up microbenchmark measured, which is off from its speed in service (``--profile-error``). Seeds
use common random numbers: every policy sees the same swarm, arrivals and faults. Policy
``oracle`` is a reference no client can run and that shares nothing with the selector's cost
model: an exact search over all chains for the earliest return of one token on the true state
(true speeds, round trips and queues) at the instant a session starts. ``bound_ms`` is a lower
bound no policy can beat: the fastest chain with every node idle. ``--admission``: nodes run the
real admission rule (``swarmnode.server.admission``: a session past the node's step-time target
is refused with a retry-after hint, and the client routes around the node until it expires), as
real nodes always do; it is always on for ``--live`` worlds and off by default for the synthetic
scenarios, whose documented figures (docs/routing.md) were measured without it.

    python scripts/simulate_routing.py --scenario contention --seeds 10 --json out.json
    python scripts/simulate_routing.py --sweep load --seeds 10 --plot docs/routing_p95_vs_load.png
    python scripts/simulate_routing.py --sweep error --seeds 10 --plot docs/routing_p95_vs_error.png
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from dataclasses import dataclass, field

from swarmnode.errors import NodeAtCapacity, NoServersForBlocks
from swarmnode.records import NodeRecord, NodeState, SwarmSnapshot
from swarmnode.routing import (
    AcoParams,
    AntColonyRouter,
    Bans,
    Hop,
    RandomRouter,
    ShortestPathRouter,
    shortest_load_params,
)
from swarmnode.routing.shortest import BanFeedback, shortest_chain
from swarmnode.server.admission import Admission, Load, Returns, StepCost, default_max_step_s
from swarmnode.server.block_selection import choose_span, plan_move, served_throughput
from swarmnode.server.busy import BusyMeter, SlowdownMeter

POLICIES = (
    "aco",
    "shortest",
    "shortest_load",
    "random",
    "aco-noshare",
    "aco-noload",
    "aco-sessions",
    "shortest_load-busy",
    "oracle",
)
ACO_OVERRIDES: dict[str, float] = {}  # --aco name=value, for exploring parameters
SCENARIOS = {
    "static-low": dict(load=0.2),
    "contention": dict(load=0.75),
    "gray": dict(load=0.4, gray_at=40.0),
    "churn": dict(load=0.4, churn=True),
    # Nodes leave for good; the rest rebalance (--blocks auto: block_selection.plan_move).
    "departures": dict(load=0.4, departures=True, rebalance=True),
}
BASE_PER_BLOCK_S = 0.01  # a fast consumer GPU on a 70B-class block; slower nodes are 2x and 6x
TOKENS, PROMPT = 32, 8
CLIENTS = 6
DURATION_S = 120.0
REFRESH_S = 2.0  # how often a client re-reads the DHT (ClientConfig.swarm_refresh_period)
ANNOUNCE_S = 10.0  # how often a node re-announces its record, session count included (NodeConfig.announce_period)
SHARE_S = 5.0  # how often a client publishes its observations (ClientConfig.share_period)
DETECT_S = 3.0  # gossip: a crashed node is declared dead this long after the crash
REBALANCE_S = 60.0  # a node reconsiders its span this often, and when membership changed (NodeConfig.rebalance_period)
MOVE_S = 3.0  # loading the new span's blocks before announcing it
PREFILL_SPEEDUP = 4.0  # a prompt token costs this much less than a decoding step
# A node advertises the throughput a start-up microbenchmark measured, not its speed in service:
# advertised time per block = true time x a per-node lognormal factor of this sigma. 0.2 is what
# scripts/measure_profile_error.py measured on identical nodes sharing one machine (spreads of
# 0.02-0.34 over four runs, RMS 0.19); devices of a real swarm differ more. 0 = exact advertisements.
PROFILE_ERROR = 0.2


@dataclass
class SimNode:
    peer_id: str
    start: int
    end: int
    per_block_s: float
    advertised_rps: float
    delay_s: float
    alive: bool = True
    died_at: float = -1.0
    busy_until: float = 0.0
    busy_s: float = 0.0
    sessions: int = 0
    announced_sessions: int = 0  # the count in its last DHT record: what clients see
    announced_busy: float = -1.0
    announced_slowdown: float | None = None
    meter: BusyMeter | None = None  # the node's real busy meter, on simulated time
    slowdowns: SlowdownMeter | None = None  # and its real slowdown meter
    members: frozenset = frozenset()  # rebalancing: the membership it last decided on
    decided_at: float = 0.0
    moving: bool = False
    # A live node of scripts/bench_routing_live.py: a fixed cost per forward (its step-delay aid,
    # slept once per forward whatever the batch) and continuous batching: every decoding step
    # waiting when an iteration starts joins it (one forward per span), a prompt runs as its own
    # forward in the same iteration (server/scheduler.py). Synthetic nodes serve first in first out.
    step_s: float = 0.0
    batching: bool = False
    waiting: list = field(default_factory=list)  # steps for the next iteration (batching nodes)
    running: bool = False
    admission: Admission | None = None  # the real step-time check (server/admission.py), if modelled
    returns: dict = field(default_factory=dict)  # session id -> its Returns here (admission's load)


@dataclass
class Session:
    sid: int
    client: int
    began: float
    chain: list[Hop] = field(default_factory=list)
    history_tokens: dict[int, int] = field(default_factory=dict)  # hop start → tokens it holds
    step: int = 0
    hop_index: int = 0
    step_began: float = 0.0
    last_token_at: float = 0.0
    stalled_since: float | None = None


class Simulation:
    def __init__(
        self,
        scenario: str,
        policy: str,
        seed: int,
        load: float | None = None,
        duration: float = DURATION_S,
        profile_error: float = PROFILE_ERROR,
        live: dict | None = None,
        rebalance: bool | None = None,
        batching: bool = False,
        admission: bool | None = None,
    ):
        self.scenario, self.policy, self.seed, self.duration = scenario, policy, seed, duration
        self.live = live  # a swarm measured by scripts/bench_routing_live.py: see live_world()
        self.cfg = dict(SCENARIOS[scenario]) if live is None else dict(live["cfg"])
        if load is not None:
            self.cfg["load"] = load
        if rebalance is not None:
            self.cfg["rebalance"] = rebalance
        self.prompt = live["prompt"] if live else PROMPT
        self.new_tokens = live["tokens"] if live else TOKENS
        self.clients = live["clients"] if live else CLIENTS
        self.profile_error = profile_error
        self.batching = batching  # synthetic nodes batch decoding steps (live nodes: as measured)
        # Nodes refuse sessions past their step-time target (NodeBusy) and clients avoid them until
        # the hint expires, as the real ones do; on by default for live worlds only (see the docstring).
        self.admission = live is not None if admission is None else admission
        # Per client: refusing node -> when its hint expires.
        self.busy: list[dict[str, float]] = [{} for _ in range(self.clients)]
        self.now = 0.0
        self.events: list = []
        self._seq = 0
        self.board: dict[str, dict] = {}  # clients' shared observations, as the DHT would hold them
        world = random.Random(seed)  # common random numbers: the same for every policy
        self.nodes = self._build_swarm(world) if live is None else self._live_swarm(live)
        self.arrivals = random.Random(seed * 7919 + 1)
        self.faults = random.Random(seed * 7919 + 2)
        self.phases = random.Random(seed * 7919 + 3)  # when each node announces, each client shares
        self.routers = [self._router(random.Random(seed * 1000 + c), f"c{c}") for c in range(self.clients)]
        self.refusals = 0  # NodeBusy answers to sessions opening
        self.open_waits: list[float] = []  # arrival -> chain accepted (refusals and waits for a hint)
        self.session_times: list[float] = []  # arrival -> last token: what a refusal's wait costs a user
        if self.admission:
            for x in self.nodes:
                x.admission = self._admission_of(x)
        self.snapshots: list[SwarmSnapshot | None] = [None] * self.clients
        self.token_latencies: list[float] = []
        self.stalls: list[float] = []
        self.tokens = 0
        self.session_log: list[tuple[float, list[str]]] = []
        self.gray_peer: str | None = None
        self.moves: list[tuple[float, str, tuple[int, int], tuple[int, int]]] = []  # rebalancing timeline
        self.gap_s = 0.0  # seconds during which some block had no live node
        self.gap_episodes: list[list] = []  # [began, ended or None] of each such stretch
        capacity = sum(1 / n.per_block_s for n in self.nodes) / self.num_blocks  # tokens/s, perfect balance
        self.rate = self.cfg["load"] * capacity / (self.new_tokens + self.prompt / PREFILL_SPEEDUP)
        if live is not None:
            self.rate = live["rate"]

    # ---- world --------------------------------------------------------------------------------
    def _build_swarm(self, rng: random.Random) -> list[SimNode]:
        n, self.num_blocks = rng.randint(20, 60), rng.randint(32, 80)
        profiling = random.Random(self.seed * 7919 + 4)  # its own stream: sigma 0 leaves the rest unchanged
        nodes: list[SimNode] = []
        while len(nodes) < n or self._uncovered(nodes):
            per_block = BASE_PER_BLOCK_S * rng.choice((1, 2, 6))
            count = min(self.num_blocks, rng.randint(4, 12))
            snapshot = self._snapshot_of(nodes, 0.0, dead_after=None)
            start, end = choose_span(served_throughput(snapshot), count)  # placed by advertised speeds
            advertised = 1 / (per_block * profiling.lognormvariate(0.0, self.profile_error))
            delay, name = rng.uniform(0.005, 0.25), f"n{len(nodes):02d}"
            nodes.append(SimNode(name, start, end, per_block, advertised, delay, batching=self.batching))
        return nodes

    def _live_swarm(self, live: dict) -> list[SimNode]:
        self.num_blocks = live["num_blocks"]
        nodes = []
        for i, x in enumerate(live["nodes"]):
            blocks = x["end"] - x["start"]
            nodes.append(
                SimNode(
                    f"n{i:02d}",
                    x["start"],
                    x["end"],
                    x["compute_s"] / blocks,
                    x["advertised_rps"],
                    x["delay_s"],
                    step_s=x["step_s"],
                    batching=x["batching"],
                )
            )
        return nodes

    def _admission_of(self, x: SimNode) -> Admission:
        """The node's real admission rule, from its true costs (a node profiles itself at join):
        a step is its fixed cost plus compute; a batched row adds BATCH_GROWTH of the compute,
        an unbatched session a whole step."""
        blocks = x.end - x.start
        single = x.step_s / blocks + x.per_block_s
        cost = StepCost(single, BATCH_GROWTH * x.per_block_s if x.batching else single)
        return Admission(cost, blocks, default_max_step_s(blocks, self.num_blocks, cost), queued=not x.batching)

    def _load_of(self, x: SimNode) -> Load:
        """What the node's admission sees (server/handler.py): how long each session it holds stays away."""
        return Load(tuple(r.away_s(self.now) for r in x.returns.values()))  # the rest: not measured yet

    def _uncovered(self, nodes: list[SimNode]) -> bool:
        return any(not any(x.start <= b < x.end for x in nodes) for b in range(self.num_blocks))

    def _snapshot_of(self, nodes, now: float, dead_after: float | None = DETECT_S) -> SwarmSnapshot:
        records = {}
        for x in nodes:
            visible = x.alive or (dead_after is not None and now - x.died_at < dead_after)
            if visible:
                records[x.peer_id] = NodeRecord(
                    x.peer_id,
                    NodeState.ONLINE,
                    x.start,
                    x.end,
                    inference_rps=x.advertised_rps,
                    active_sessions=x.announced_sessions,
                    busy=x.announced_busy,
                    slowdown=x.announced_slowdown or -1.0,
                )
        shared = self.board if self.policy not in ("aco-noshare",) else {}
        return SwarmSnapshot("sim", self.num_blocks, records, shared=dict(shared))

    def _router(self, rng: random.Random, client_id: str):
        clock = lambda: self.now  # noqa: E731 - the routers run on simulated time
        pings = {x.peer_id: x.delay_s for x in self.nodes}  # every policy knows the round trips
        if self.policy == "shortest":
            return ShortestPathRouter(bans=Bans(clock=clock), pings=pings)
        if self.policy == "random":
            return RandomRouter(rng, bans=Bans(clock=clock))
        if self.policy.startswith("shortest_load"):  # "-busy": given the records' busy fractions too
            use_busy = self.policy == "shortest_load-busy"
            return AntColonyRouter(
                shortest_load_params(),
                learn=False,
                use_sharing=False,
                use_busy=use_busy,
                rng=rng,
                clock=clock,
                pings=pings,
            )
        if self.policy == "oracle":
            return OracleRouter(self, clock)
        return AntColonyRouter(
            AcoParams(**ACO_OVERRIDES),
            rng=rng,
            clock=clock,
            pings=pings,
            use_load=self.policy != "aco-noload",
            use_sharing=self.policy != "aco-noshare",
            use_busy=self.policy != "aco-sessions",
            publisher_id=client_id,
        )

    # ---- event loop ---------------------------------------------------------------------------
    def at(self, t: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, fn, args))

    def run(self) -> dict:
        self.at(self.arrivals.expovariate(self.rate), self.arrive)
        for c in range(self.clients):
            self.at(0.0, self.refresh, c)
            self.at(self.phases.uniform(0, SHARE_S), self.share, c)
        for x in self.nodes:  # nodes announce on their own clocks, not in step
            self.at(self.phases.uniform(0, ANNOUNCE_S), self.announce, x)
        if "gray_at" in self.cfg:
            self.at(self.cfg["gray_at"], self.gray)
        if self.cfg.get("churn"):
            self.at(self.faults.uniform(5, 15), self.crash)
        if self.cfg.get("departures"):
            self.at(self.faults.uniform(5, 15), self.depart)
            self.at(1.0, self.watch_gaps)
        if self.cfg.get("rebalance"):
            for x in self.nodes:
                self.at(self.phases.uniform(0, ANNOUNCE_S), self.reconsider, x)
        while self.events:
            t, _, fn, args = heapq.heappop(self.events)
            if t > self.duration:
                break
            self.now = t
            fn(*args)
        return self.metrics()

    def refresh(self, client: int) -> None:
        self.snapshots[client] = self._snapshot_of(self.nodes, self.now)
        self.at(self.now + REFRESH_S, self.refresh, client)

    def share(self, client: int) -> None:
        router = self.routers[client]
        if hasattr(router, "observations"):
            self.board[f"c{client}"] = router.observations()
        self.at(self.now + SHARE_S, self.share, client)

    def announce(self, x: SimNode) -> None:
        if x.alive:
            x.announced_sessions, x.announced_busy = x.sessions, self.meter(x).fraction()
            x.announced_slowdown = self.slowdown_meter(x).mean()
        self.at(self.now + ANNOUNCE_S, self.announce, x)

    def arrive(self) -> None:
        session = Session(len(self.session_log), self.arrivals.randrange(self.clients), self.now)
        later = self.now + self.arrivals.expovariate(self.rate)
        if self.live is None or later < self.live["arrivals_s"]:  # a live run's arrivals stop, its sessions finish
            self.at(later, self.arrive)
        self.start_session(session)

    def start_session(self, session: Session) -> None:
        busy = {peer: until for peer, until in self.busy[session.client].items() if until > self.now}
        self.busy[session.client] = busy
        try:
            session.chain = self.routers[session.client].choose_chain(
                self.snapshots[session.client], 0, self.num_blocks, exclude=frozenset(busy)
            )
        except NoServersForBlocks:  # every candidate at capacity: wait for the first hint to expire
            self.at(min(busy.values()) if busy else self.now + 1.0, self.start_session, session)
            return
        for hop in session.chain:  # a refusal comes back after a round trip; the client routes again
            x = self.node(hop.peer_id)
            try:
                if x.admission is not None and x.alive:
                    x.admission.check(x.sessions, self._load_of(x))
            except NodeAtCapacity as e:
                self.refusals += 1
                self.busy[session.client][hop.peer_id] = self.now + e.retry_after
                self.at(self.now + x.delay_s, self.start_session, session)
                return
        self.open_waits.append(self.now - session.began)
        self.session_log.append((self.now, [h.peer_id for h in session.chain]))
        self.routers[session.client].hold(session.chain)
        for hop in session.chain:
            self.node(hop.peer_id).sessions += 1
        session.step_began = session.last_token_at = self.now
        self.send(session)

    def node(self, peer_id: str) -> SimNode:
        return self.nodes[int(peer_id[1:])]

    # ---- one hop of one step --------------------------------------------------------------------
    def step_tokens(self, session: Session) -> int:
        return self.prompt if session.step == 0 else 1

    def send(self, session: Session) -> None:
        hop = session.chain[session.hop_index]
        x = self.node(hop.peer_id)
        self.at(self.now + x.delay_s / 2, self.reach, session, hop, self.now)

    def reach(self, session: Session, hop: Hop, sent_at: float) -> None:
        x = self.node(hop.peer_id)
        if not x.alive:  # the connection is refused: the client learns after the way back
            self.at(self.now + x.delay_s / 2, self.failed, session, hop)
            return
        if session.sid in x.returns:
            x.returns[session.sid].arrived(self.now)
        tokens = self.step_tokens(session)
        replay = session.history_tokens.pop(-hop.start - 1, 0)  # tokens to rebuild after a failover
        work = (tokens if session.step > 0 else tokens / PREFILL_SPEEDUP) + replay / PREFILL_SPEEDUP
        decoding = session.step > 0 and replay == 0
        if x.batching:
            x.waiting.append((session, hop, sent_at, work, decoding, self.now))
            if not x.running:
                self.iterate(x)
            return
        service = x.step_s + work * (hop.end - hop.start) * x.per_block_s
        begin = max(self.now, x.busy_until)
        x.busy_until = begin + service
        x.busy_s += service
        self.at(x.busy_until, self.computed, session, hop, sent_at, service, begin, self.now, decoding)

    def iterate(self, x: SimNode) -> None:
        """One iteration of a batching node: the waiting decoding steps, one forward per span
        (a batch costs BATCH_GROWTH more per extra row), then the first waiting prompt."""
        decodes = [job for job in x.waiting if job[4]]
        prompt = next((job for job in x.waiting if not job[4]), None)
        x.waiting = [job for job in x.waiting if not job[4] and job is not prompt]
        groups: dict[tuple[int, int], list] = {}
        for job in decodes:
            groups.setdefault((job[1].start, job[1].end), []).append(job)
        forwards = [(jobs, 1 + BATCH_GROWTH * (len(jobs) - 1)) for jobs in groups.values()]
        if prompt is not None:
            forwards.append(([prompt], prompt[3]))
        t = self.now
        for jobs, work in forwards:
            blocks = jobs[0][1].end - jobs[0][1].start
            service = x.step_s + work * blocks * x.per_block_s
            for session, hop, sent_at, _, decoding, arrived in jobs:
                self.at(t + service, self.computed, session, hop, sent_at, service, t, arrived, decoding)
            t += service
        x.busy_s += t - self.now
        x.busy_until, x.running = t, bool(forwards)
        if forwards:
            self.at(t, self.iterated, x)

    def iterated(self, x: SimNode) -> None:
        x.running = False
        if x.alive and x.waiting:
            self.iterate(x)

    def meter(self, x: SimNode) -> BusyMeter:
        if x.meter is None:
            x.meter = BusyMeter(clock=lambda: self.now)
        return x.meter

    def slowdown_meter(self, x: SimNode) -> SlowdownMeter:
        if x.slowdowns is None:
            x.slowdowns = SlowdownMeter(clock=lambda: self.now)
        return x.slowdowns

    def computed(
        self, session: Session, hop: Hop, sent_at: float, service: float, began: float, arrived: float, decoding: bool
    ) -> None:
        """The node finished the step: it answers with its compute time, busy fraction and slowdown."""
        x = self.node(hop.peer_id)
        if not x.alive or x.died_at > began:  # it crashed meanwhile: the client sees the stream reset
            self.at(self.now + x.delay_s / 2, self.failed, session, hop)
            return
        meter = self.meter(x)
        meter.add(began, self.now)
        x.returns.setdefault(session.sid, Returns()).answered(self.now)
        slowdowns = self.slowdown_meter(x)
        if decoding:
            slowdowns.add(self.now - arrived, service)
        load = (meter.fraction(), slowdowns.mean(), self.now - arrived)
        self.at(self.now + x.delay_s / 2, self.answered, session, hop, sent_at, service, load)

    def answered(self, session: Session, hop: Hop, sent_at: float, service: float, load: tuple) -> None:
        if session.chain[session.hop_index] != hop:
            return
        tokens = self.step_tokens(session)
        busy, slowdown, in_node = load
        self.routers[session.client].report_step(
            hop, self.now - sent_at, tokens, service, busy, slowdown, node_seconds=in_node
        )
        session.hop_index += 1
        if session.hop_index < len(session.chain):
            self.send(session)
            return
        if session.step > 0:
            self.token_latencies.append(self.now - session.step_began)
        if session.stalled_since is not None:
            self.stalls.append(self.now - session.stalled_since)
            session.stalled_since = None
        self.tokens += tokens if session.step > 0 else 0
        session.step += 1
        session.hop_index = 0
        session.step_began = session.last_token_at = self.now
        if session.step > self.new_tokens:
            self.session_times.append(self.now - session.began)
            self.routers[session.client].release(session.chain)
            for h in session.chain:
                self.node(h.peer_id).sessions -= 1
                self.node(h.peer_id).returns.pop(session.sid, None)
            return
        self.send(session)

    def failed(self, session: Session, hop: Hop) -> None:
        router = self.routers[session.client]
        router.report_failure(hop, ConnectionError("refused"))
        if session.stalled_since is None:
            session.stalled_since = session.last_token_at
        self.node(hop.peer_id).sessions -= 1
        self.node(hop.peer_id).returns.pop(session.sid, None)
        planned = getattr(router, "backup", lambda h: None)(hop)
        replacement = planned if planned and all(self.node(h.peer_id).alive or True for h in planned) else None
        if replacement is None:
            try:
                replacement = router.choose_chain(
                    self.snapshots[session.client], hop.start, hop.end, exclude=frozenset({hop.peer_id})
                )
            except NoServersForBlocks:
                self.node(hop.peer_id).sessions += 1
                self.at(self.now + 1.0, self.failed, session, hop)
                return
        index = session.chain.index(hop)
        session.chain[index : index + 1] = replacement
        router.release([hop])
        router.hold(replacement)
        held = self.prompt + max(0, session.step - 1)
        for h in replacement:
            self.node(h.peer_id).sessions += 1
            session.history_tokens[-h.start - 1] = held
        self.send(session)

    # ---- faults -----------------------------------------------------------------------------------
    def gray(self) -> None:
        """A fast node whose blocks others also serve (so it can be avoided) turns 5x slower,
        with no error and the same advertised throughput. Chosen by the world's random stream,
        so every policy faces the same node."""

        def replaceable(x):
            return all(any(y is not x and y.start <= b < y.end for y in self.nodes) for b in range(x.start, x.end))

        if self.live is not None:  # the node the live run slowed down
            victim = self.nodes[self.live["gray_node"]]
        else:
            candidates = [x for x in self.nodes if replaceable(x) and x.per_block_s == BASE_PER_BLOCK_S]
            victim = self.faults.choice(sorted(candidates or self.nodes, key=lambda x: x.peer_id))
        self.gray_peer = victim.peer_id
        victim.per_block_s *= 5
        victim.step_s *= 5  # a live node: its step-delay aid 5x longer (SIGUSR1)

    def crash(self) -> None:
        alive = [x for x in self.nodes if x.alive]
        victim = self.faults.choice(alive)
        victim.alive, victim.died_at = False, self.now
        victim.busy_until = self.now
        self._drop_waiting(victim)
        self.at(self.now + self.faults.uniform(10, 20), self.rejoin, victim)
        self.at(self.now + self.faults.uniform(5, 15), self.crash)

    def depart(self) -> None:
        """A node leaves for good (its record lingers until gossip declares it dead)."""
        alive = [x for x in self.nodes if x.alive]
        if len(alive) > 1:
            victim = self.faults.choice(alive)
            victim.alive, victim.died_at, victim.busy_until = False, self.now, self.now
            self._drop_waiting(victim)
        self.at(self.now + self.faults.uniform(5, 15), self.depart)

    def _drop_waiting(self, x: SimNode) -> None:
        """A node died: steps waiting for its next iteration fail like a reset stream."""
        for session, hop, *_ in x.waiting:
            self.at(self.now + x.delay_s / 2, self.failed, session, hop)
        x.waiting = []

    def watch_gaps(self) -> None:
        """Once a second: is some block served by no live node? Episodes go to ``gap_episodes``."""
        gap = any(not any(x.alive and x.start <= b < x.end for x in self.nodes) for b in range(self.num_blocks))
        if gap:
            self.gap_s += 1.0
            if not self.gap_episodes or self.gap_episodes[-1][1] is not None:
                self.gap_episodes.append([self.now, None])
        elif self.gap_episodes and self.gap_episodes[-1][1] is None:
            self.gap_episodes[-1][1] = self.now
        self.at(self.now + 1.0, self.watch_gaps)

    # ---- rebalancing (the real decision rule: block_selection.plan_move) ------------------------
    def reconsider(self, x: SimNode) -> None:
        """At its announce tick a node reads the swarm; it decides when membership changed or
        REBALANCE_S passed, and a move lands MOVE_S later if a fresh look still agrees."""
        if not x.alive:
            return
        self.at(self.now + ANNOUNCE_S, self.reconsider, x)
        snapshot = self._snapshot_of(self.nodes, self.now)
        members = frozenset((r.peer_id, r.start, r.end) for r in snapshot.live())
        if x.moving or (members == x.members and self.now - x.decided_at < REBALANCE_S):
            return
        x.members, x.decided_at = members, self.now
        move = plan_move(snapshot, x.peer_id, (x.start, x.end), x.advertised_rps)
        if move is not None:
            x.moving = True
            self.at(self.now + MOVE_S, self.moved, x, move.new)

    def moved(self, x: SimNode, new: tuple[int, int]) -> None:
        x.moving = False
        if not x.alive:
            return
        again = plan_move(self._snapshot_of(self.nodes, self.now), x.peer_id, (x.start, x.end), x.advertised_rps)
        if again is not None and again.new == new:
            self.moves.append((self.now, x.peer_id, (x.start, x.end), new))
            x.start, x.end = new

    def rejoin(self, x: SimNode) -> None:
        x.alive, x.sessions, x.announced_sessions, x.announced_busy, x.meter = True, 0, 0, 0.0, None
        x.announced_slowdown, x.slowdowns, x.returns = None, None, {}

    # ---- results -------------------------------------------------------------------------------
    def idle_bound_s(self) -> float:
        """A lower bound on any token's latency: the fastest chain of the swarm as it started,
        on true speeds and round trips, with every node idle (no policy can do better)."""
        records = [
            NodeRecord(x.peer_id, NodeState.ONLINE, x.start, x.end, inference_rps=1.0 / x.per_block_s)
            for x in self.nodes  # (for live nodes, whose step cost is mostly fixed, a looser bound)
        ]
        snapshot = SwarmSnapshot("sim", self.num_blocks, {r.peer_id: r for r in records})
        chain = shortest_chain(snapshot, 0, self.num_blocks, pings={x.peer_id: x.delay_s for x in self.nodes})
        nodes = [self.node(h.peer_id) for h in chain]
        return sum(x.delay_s + x.step_s + (h.end - h.start) * x.per_block_s for h, x in zip(chain, nodes, strict=True))

    def metrics(self) -> dict:
        lat = sorted(self.token_latencies)
        busy = [x.busy_s / self.duration for x in self.nodes]
        jain = sum(busy) ** 2 / (len(busy) * sum(b * b for b in busy)) if any(busy) else 0.0
        result = {
            "mean_ms": 1000 * statistics.fmean(lat) if lat else math.nan,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else math.nan,
            "p95_ms": 1000 * p95(lat),
            "recovery_s": statistics.fmean(self.stalls) if self.stalls else 0.0,
            "failovers": len(self.stalls),
            "jain": jain,
            "tokens_per_s": self.tokens / self.duration,
            "offered_load": self.cfg["load"],
            "bound_ms": 1000 * self.idle_bound_s(),
            "gap_s": self.gap_s,
            "moves": len(self.moves),
            "refusals": self.refusals,
            "open_wait_ms": 1000 * statistics.fmean(self.open_waits) if self.open_waits else 0.0,
            "session_p95_s": p95(sorted(self.session_times)),
        }
        if self.gray_peer is not None:
            after = [chain for t, chain in self.session_log if self.cfg["gray_at"] + 30 <= t]
            before = [chain for t, chain in self.session_log if self.cfg["gray_at"] - 30 <= t < self.cfg["gray_at"]]
            result["gray_share_before"] = sum(self.gray_peer in c for c in before) / max(1, len(before))
            result["gray_share_after_30s"] = sum(self.gray_peer in c for c in after) / max(1, len(after))
        return result


def p95(ordered: list[float]) -> float:
    """The 95th percentile of a sorted list (nearest rank below), NaN if empty."""
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else math.nan


class OracleRouter(BanFeedback):
    """A reference no client can run, built without the selector's cost model: an exact search
    over all chains on the simulation's true state the instant a session starts. For every
    chain it computes when one decoding token would come back if sent now — the true round
    trips, the true per-block times and each node's true queue (its backlog of work already
    accepted, first in first out) — and takes the earliest. Nodes serve FIFO, so arriving later
    never finishes earlier, and a time-dependent Dijkstra over block boundaries finds that
    minimum exactly (the same answer as enumerating every chain). It is greedy for the first
    token: it does not foresee the session's later tokens or other arrivals."""

    def __init__(self, sim: Simulation, clock):
        self.sim = sim
        self.bans = Bans(clock=clock)

    def choose_chain(self, snapshot, start: int, end: int, *, exclude: frozenset[str] = frozenset()) -> list[Hop]:
        now = self.sim.now
        nodes = [x for x in self.sim.nodes if x.alive and x.peer_id not in exclude]
        best, came_from, queue = {start: now}, {}, [(now, start)]
        while queue:
            t, b = heapq.heappop(queue)
            if b == end:
                break
            if t > best[b]:
                continue
            for x in nodes:
                if not x.start <= b < x.end:
                    continue
                begin = max(t + x.delay_s / 2, x.busy_until)
                for e in range(b + 1, min(x.end, end) + 1):
                    back = begin + x.step_s + (e - b) * x.per_block_s + x.delay_s / 2
                    if back < best.get(e, math.inf):
                        best[e], came_from[e] = back, Hop(x.peer_id, b, e)
                        heapq.heappush(queue, (back, e))
        if end not in came_from:
            raise NoServersForBlocks([b for b in range(start, end) if b not in best], "sim", 0.0)
        chain, b = [], end
        while b != start:
            chain.append(came_from[b])
            b = came_from[b].start
        return chain[::-1]


# What a live step costs beyond the step-delay aid (the tiny blocks compute in < 1 ms).
LIVE_STEP_OVERHEAD_S = 0.001
# How much more a batched forward costs per extra row (live nodes: the step-delay aid is slept
# once per forward and the tiny blocks' compute barely grows with rows).
BATCH_GROWTH = 0.1
# Candidate costs of one live hop beyond the network-delay aid (libp2p, client and node
# handling, CPU contention among every process of the run on one machine): the calibration
# picks the one that best matches the live low-load run, then predicts everything else.
HOP_OVERHEAD_CANDIDATES_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08)


def live_nodes_batch(report: dict) -> bool:
    """Whether a live run's nodes batched: unless they were started with ``--no-batching``
    (runs from before ``--node-flags`` recorded no flags: their nodes batched)."""
    return "--no-batching" not in report.get("node_flags", "").split()


def live_world(
    report: dict, rate: float, arrivals_s: float, gray_at: float | None = None, hop_overhead_s: float = 0.002
) -> dict:
    """The simulator's world for a swarm measured by scripts/bench_routing_live.py: the same
    spans, step delays (a fixed cost per forward, + LIVE_STEP_OVERHEAD_S of compute), network
    delays (+ ``hop_overhead_s``), advertised throughputs, clients, session shape and arrival
    rate; its nodes batch, as the live ones do (unless the run's nodes were started with
    ``--no-batching``: then they serve one step after another, first in first out)."""
    batching = live_nodes_batch(report)
    nodes = []
    for x in report["nodes"]:
        start, end = (int(v) for v in x["span"].split(":"))
        delay_s = x["net_ms"] / 1000 + hop_overhead_s
        nodes.append(
            dict(
                start=start,
                end=end,
                step_s=x["step_ms"] / 1000,
                compute_s=LIVE_STEP_OVERHEAD_S,
                batching=batching,
                delay_s=delay_s,
                advertised_rps=x["advertised_rps"],
            )
        )
    cfg = {"load": 0.0} if gray_at is None else {"load": 0.0, "gray_at": gray_at}
    return dict(
        nodes=nodes, num_blocks=report["num_blocks"], clients=report["clients"], prompt=report["prompt"],
        tokens=report["tokens"], rate=rate, arrivals_s=arrivals_s, cfg=cfg, gray_node=report["gray"]["node"],
    )  # fmt: skip


def compare_with_live(path: str, seeds: int) -> None:
    """Predicted (simulator, mean over seeds) against measured (live, median over repeats)
    p50 / p95 per load and policy, and the gray node's share of new sessions."""
    report = json.loads(open(path).read())
    repeats = report["repeats"]
    policies = [p for p in POLICIES[:4] if all(f"low/{p}" in r for r in repeats)]

    def simulated(load: str, policy: str, overhead: float) -> dict:
        world = live_world(report, report["loads"][load], report["duration"], hop_overhead_s=overhead)
        return summarize([Simulation("live", policy, s, duration=report["duration"] + 60, live=world).run()
                          for s in range(seeds)])  # fmt: skip

    def live_median(load: str, policy: str, q: str) -> float:
        return statistics.median(r[f"{load}/{policy}"][q] for r in repeats)

    # Calibration: one number, the per-hop overhead, fitted to the live low-load p50s.
    misfit = {
        overhead: statistics.fmean(
            abs(simulated("low", p, overhead)["p50_ms"] / live_median("low", p, "p50") - 1) for p in policies
        )
        for overhead in HOP_OVERHEAD_CANDIDATES_S
    }
    overhead = min(misfit, key=misfit.get)
    flags = report.get("node_flags", "")
    served = "batching" if live_nodes_batch(report) else "first in, first out"
    print(f"live nodes {'started with ' + flags if flags else 'with default flags'}: simulated as {served}")
    print(f"calibrated per-hop overhead: {1000 * overhead:.0f} ms (fitted to the live low-load p50s; "
          f"candidates {[round(1000 * c) for c in HOP_OVERHEAD_CANDIDATES_S]} ms)")  # fmt: skip
    print(f"simulator ({seeds} seeds) vs live ({len(repeats)} repeat(s)), per-token latency in ms")
    print("load       policy         live p50  sim p50  error    live p95  sim p95  error")
    errors = []
    for load in report["loads"]:
        for policy in policies:
            sim = simulated(load, policy, overhead)
            live = {q: live_median(load, policy, q) for q in ("p50", "p95")}
            e50, e95 = (sim[f"{q}_ms"] / live[q] - 1 for q in ("p50", "p95"))
            errors += [abs(e50), abs(e95)]
            print(f"{load:10s} {policy:13s}  {live['p50']:7.1f}  {sim['p50_ms']:7.1f}  {e50:+6.0%}   "
                  f"{live['p95']:7.1f}  {sim['p95_ms']:7.1f}  {e95:+6.0%}")  # fmt: skip
    print(f"mean absolute error over p50 and p95: {statistics.fmean(errors):.0%}")
    gray = report["gray"]
    world = live_world(report, gray["rate"], gray["duration"], gray_at=gray["at"], hop_overhead_s=overhead)
    for policy in policies:
        sim = summarize([Simulation("live", policy, s, duration=gray["duration"] + 60, live=world).run()
                         for s in range(seeds)])  # fmt: skip
        shares = [[share for t, share in r[f"gray/{policy}"]["shares"] if t >= 20] for r in repeats]
        live_after = statistics.median(statistics.fmean(s) if s else float("nan") for s in shares)
        print(f"gray {policy:13s} share of new sessions on the slowed node from 20 s after: "
              f"live {live_after:.0%}, sim {sim['gray_share_after_30s']:.0%} (from 30 s)")  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: statistics.fmean(r[k] for r in runs if not math.isnan(r[k])) for k in keys}


def run_scenario(
    scenario: str,
    seeds: int,
    policies=POLICIES,
    load: float | None = None,
    profile_error: float = PROFILE_ERROR,
    batching: bool = False,
    admission: bool = False,
) -> dict:
    options = dict(profile_error=profile_error, batching=batching, admission=admission)
    return {p: summarize([Simulation(scenario, p, s, load, **options).run() for s in range(seeds)]) for p in policies}


SWEEPS = {  # --sweep NAME: the contention scenario with one thing varied
    "load": ("offered load (fraction of the swarm's ideal capacity)", (0.1, 0.3, 0.5, 0.7, 0.85)),
    "error": ("profile error (sigma of log advertised / true time per block)", (0.0, 0.1, 0.2, 0.3, 0.4)),
}


def sweep(name: str, seeds: int, policies, profile_error: float) -> dict[str, dict]:
    """p95 and friends of each policy in ``contention`` at each point of a sweep."""
    points = SWEEPS[name][1]
    if name == "load":
        return {
            str(x): run_scenario("contention", seeds, policies, load=x, profile_error=profile_error) for x in points
        }
    return {str(x): run_scenario("contention", seeds, policies, profile_error=x) for x in points}


def plot(name: str, results: dict[str, dict], seeds: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [float(x) for x in results]
    for policy in next(iter(results.values())):
        style = dict(linestyle="--", color="black") if policy == "oracle" else {}
        plt.plot(points, [results[str(x)][policy]["p95_ms"] for x in points], marker="o", label=policy, **style)
    plt.xlabel(SWEEPS[name][0])
    plt.ylabel("p95 per-token latency (ms)")
    plt.yscale("log")
    plt.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    plt.title(f"Routing policies under contention, {seeds} seeds each")
    plt.savefig(path, dpi=120, bbox_inches="tight")
    plt.close()


def print_results(results: dict[str, dict]) -> None:
    for policy, m in results.items():
        extra = (
            f"  gray share before {m['gray_share_before']:.0%} after 30 s {m['gray_share_after_30s']:.0%}"
            if ("gray_share_after_30s" in m)
            else ""
        )
        print(
            f"{policy:14s} mean {m['mean_ms']:8.1f} ms  p50 {m['p50_ms']:8.1f}  p95 {m['p95_ms']:8.1f}  "
            f"recovery {m['recovery_s']:.2f} s  jain {m['jain']:.2f}  {m['tokens_per_s']:.1f} tok/s  "
            f"(idle bound {m['bound_ms']:.0f} ms){extra}"
            + (f"  refusals {m['refusals']:.0f}, open wait {m['open_wait_ms']:.0f} ms" if m["refusals"] else "")
            + f"  session p95 {m['session_p95_s']:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="contention")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", default=None, help="write the per-policy results here")
    parser.add_argument("--sweep", choices=sorted(SWEEPS), help="p95 latency in contention against load or error")
    parser.add_argument("--plot", default=None, help="with --sweep: write a PNG plot here")
    parser.add_argument("--aco", nargs="*", default=[], help="override AcoParams for aco*, e.g. q0=0.8")
    parser.add_argument("--policies", nargs="*", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--live", default=None, help="compare with a run of scripts/bench_routing_live.py --json")
    parser.add_argument("--batching", action="store_true", help="nodes batch decoding steps instead of serving FIFO")
    parser.add_argument(
        "--admission",
        action="store_true",
        help="synthetic nodes refuse sessions past their step-time target, as real ones do (live worlds: always)",
    )
    parser.add_argument(
        "--profile-error",
        type=float,
        default=PROFILE_ERROR,
        help=f"sigma of the lognormal error of advertised throughput (default {PROFILE_ERROR}; 0 = exact)",
    )
    args = parser.parse_args()
    for item in args.aco:
        name, value = item.split("=")
        kind = type(getattr(AcoParams(), name))
        ACO_OVERRIDES[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    if args.live:
        compare_with_live(args.live, args.seeds)
        return
    if args.sweep:
        results = sweep(args.sweep, args.seeds, args.policies, args.profile_error)
        for point, per_policy in results.items():
            print(f"{args.sweep} {point}:", {p: round(v["p95_ms"]) for p, v in per_policy.items()})
        if args.plot:
            plot(args.sweep, results, args.seeds, args.plot)
        summary = {"sweep": args.sweep, "seeds": args.seeds, "profile_error": args.profile_error, "points": results}
    else:
        results = run_scenario(
            args.scenario, args.seeds, args.policies, None, args.profile_error, args.batching, args.admission
        )
        options = (", batching nodes" if args.batching else "") + (", admission control" if args.admission else "")
        print(f"scenario {args.scenario}, {args.seeds} seeds (means over seeds), profile error {args.profile_error}"
              f"{options}")  # fmt: skip
        print_results(results)
        summary = {"scenario": args.scenario, "seeds": args.seeds, "profile_error": args.profile_error}
        summary["policies"] = results
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
