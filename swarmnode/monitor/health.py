"""Swarm health as pure functions over DHT snapshots: what the monitor exports and shows.

``model_health`` turns one model's :class:`~swarmnode.records.SwarmSnapshot` into a frozen
:class:`ModelHealth` (replicas and advertised throughput per block, coverage, the weakest
block, nodes by state, dead verdicts, the version mix, and per node its state, span,
throughput, busy fraction, last-seen age and the step time clients measured). No sockets:
unit-tested on hand-made snapshots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from swarmnode.records import ModelRecord, NodeRecord, NodeState, SwarmSnapshot, block_runs
from swarmnode.routing.stigmergy import aggregate

NODE_STATES = ("ONLINE", "JOINING", "DRAINING", "OFFLINE", "DEAD")
MAX_NODES_PER_MODEL = 256  # per-node series and page rows are capped: a label set bounded by swarm size
SHARED_CLAMP = 1e6  # the monitor has no priors of its own: clients' medians are taken as they are


@dataclass(frozen=True)
class NodeHealth:
    """One node as the monitor sees it."""

    peer_id: str
    name: str  # the node's public name, or the start of its peer id
    state: str  # one of NODE_STATES
    start: int
    end: int
    throughput: float  # advertised tokens/s per block
    busy: float | None  # fraction of the last few seconds spent computing; None = not reported
    sessions: int
    version: str
    dtype: str
    last_seen_s: float  # seconds since its newest announcement
    metrics_addr: str
    step_s: float | None  # clients' median compute time of one token through its whole span


@dataclass(frozen=True)
class ModelHealth:
    """One model's swarm: coverage per block and its nodes."""

    model_id: str
    family: str
    num_blocks: int
    replicas: tuple[int, ...]  # ONLINE, not-dead nodes serving each block
    throughput: tuple[float, ...]  # their advertised tokens/s, summed per block
    coverage: float  # fraction of blocks with at least one replica
    min_replicas: int  # the weakest block's replicas
    gaps: tuple[tuple[int, int], ...]  # maximal [start, end) runs of blocks nobody serves
    nodes_by_state: dict[str, int]
    dead_verdicts: int  # peers some member declared dead, by verdicts in the DHT now (they expire)
    versions: dict[str, int]  # live nodes per software version
    nodes: tuple[NodeHealth, ...]
    nodes_omitted: int = 0  # nodes beyond MAX_NODES_PER_MODEL


@dataclass(frozen=True)
class SwarmHealth:
    """Everything the monitor knows at one refresh."""

    models: tuple[ModelHealth, ...] = ()
    refreshed_at: float = 0.0  # wall-clock time of the last successful refresh; 0 = never
    error: str = ""  # why the last refresh failed ("" = it did not)
    initial_peers: tuple[str, ...] = ()
    refresh_period_s: float = 0.0

    @property
    def reachable(self) -> bool:
        return self.refreshed_at > 0 and not self.error


def verdict_subjects(snapshot: SwarmSnapshot) -> dict[str, int]:
    """Peers that some member (a node that has not left) declared dead, with the highest
    incarnation declared: what gossip says, before readers ask for corroboration."""
    members = {peer for peer, record in snapshot.nodes.items() if record.state != NodeState.OFFLINE}
    subjects: dict[str, int] = {}
    for verdict in snapshot.verdicts:
        if verdict.reporter in members and verdict.reporter != verdict.peer_id:
            subjects[verdict.peer_id] = max(subjects.get(verdict.peer_id, -1), verdict.incarnation)
    return subjects


def node_state(snapshot: SwarmSnapshot, record: NodeRecord, vanished: frozenset[str] = frozenset()) -> str:
    """As :meth:`SwarmSnapshot.state_name`, and DEAD for a vanished node that had not left."""
    if record.peer_id in vanished and record.state != NodeState.OFFLINE:
        return "DEAD"
    return snapshot.state_name(record)


def recall(
    snapshot: SwarmSnapshot, memory: Mapping[str, tuple[NodeRecord, float]], now: float, retention_s: float
) -> tuple[SwarmSnapshot, frozenset[str], dict[str, tuple[NodeRecord, float]]]:
    """Add the nodes seen before whose records have since expired (a crashed node stops announcing
    and its record soon vanishes, often before gossip's verdict is read): they stay on the page, as
    vanished, for ``retention_s`` seconds. ``memory`` maps peer id → (last record, DHT time last seen).

    Returns the snapshot with those nodes, their peer ids, and the memory for the next refresh."""
    new_memory = {peer: (record, now) for peer, record in snapshot.nodes.items()}
    nodes, vanished = dict(snapshot.nodes), set()
    for peer, (record, seen) in memory.items():
        if peer in nodes or now - seen > retention_s or record.end > snapshot.num_blocks:
            continue
        new_memory[peer] = (record, seen)
        nodes[peer] = record
        vanished.add(peer)
    return replace(snapshot, nodes=nodes), frozenset(vanished), new_memory


def model_health(
    snapshot: SwarmSnapshot, record: ModelRecord, now: float, vanished: frozenset[str] = frozenset()
) -> ModelHealth:
    """Summarise ``snapshot`` (read at DHT time ``now``) for ``record``'s model. Nodes in
    ``vanished`` (records expired, see :func:`recall`) count as DEAD unless they said goodbye."""
    n = snapshot.num_blocks
    shared = aggregate(snapshot.shared, {}, skip_publisher=None, clamp=SHARED_CLAMP, sessions_cap=1 << 20)
    serving = [[r for r in snapshot.serving(b) if r.peer_id not in vanished] for b in range(n)]
    replicas = tuple(len(nodes) for nodes in serving)
    throughput = tuple(round(sum(r.inference_rps for r in nodes), 3) for nodes in serving)
    records = sorted(snapshot.nodes.values(), key=lambda r: (r.start, r.end, r.peer_id))
    nodes = []
    for r in records:
        estimate = shared.estimates.get(r.peer_id)
        per_block = estimate.per_block_s if estimate is not None else None
        nodes.append(
            NodeHealth(
                peer_id=r.peer_id,
                name=r.public_name or r.peer_id[:12],
                state=node_state(snapshot, r, vanished),
                start=r.start,
                end=r.end,
                throughput=round(r.inference_rps, 3),
                busy=round(r.busy, 3) if r.busy >= 0 else None,
                sessions=r.active_sessions,
                version=r.version or "unknown",
                dtype=r.dtype,
                last_seen_s=round(max(0.0, now - r.timestamp), 1),
                metrics_addr=r.metrics_addr,
                step_s=per_block * r.num_blocks if per_block is not None else None,
            )
        )
    states = Counter(node.state for node in nodes)
    live = [node for node in nodes if node.state not in ("DEAD", "OFFLINE")]
    return ModelHealth(
        model_id=snapshot.model_id,
        family=record.family,
        num_blocks=n,
        replicas=replicas,
        throughput=throughput,
        coverage=sum(1 for c in replicas if c > 0) / n,
        min_replicas=min(replicas, default=0),
        gaps=tuple(block_runs([b for b in range(n) if replicas[b] == 0])),
        nodes_by_state={state: states.get(state, 0) for state in NODE_STATES},
        dead_verdicts=len(verdict_subjects(snapshot)),
        versions=dict(Counter(node.version for node in live)),
        nodes=tuple(nodes[:MAX_NODES_PER_MODEL]),
        nodes_omitted=max(0, len(nodes) - MAX_NODES_PER_MODEL),
    )


def health_json(health: SwarmHealth) -> dict:
    """The JSON document served at ``/api/health`` (see docs/monitoring.md)."""
    return {
        "reachable": health.reachable,
        "error": health.error,
        "refreshed_at": health.refreshed_at,
        "refresh_period_s": health.refresh_period_s,
        "initial_peers": list(health.initial_peers),
        "models": [asdict(model) for model in health.models],
    }


def scrape_targets(health: SwarmHealth) -> list[dict]:
    """Prometheus file-based service discovery: every live node's metrics address, labelled with
    its model, peer id and name (nodes that are dead, offline or without an endpoint are left out)."""
    groups = []
    for model in health.models:
        for node in model.nodes:
            if node.metrics_addr and node.state not in ("DEAD", "OFFLINE"):
                labels = {"model": model.model_id, "peer": node.peer_id, "node": node.name}
                groups.append({"targets": [node.metrics_addr], "labels": labels})
    return groups
