"""The monitor's Prometheus series: swarm-wide gauges read from the latest health at scrape time.

A scrape reads memory only (the refresh thread swaps in a new :class:`SwarmHealth`); it never
touches the DHT. Per-node series are bounded by the swarm's size (capped per model).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

import swarmnode
from swarmnode.monitor.health import NODE_STATES, SwarmHealth


class MonitorMetrics:
    """The monitor's registry: its own refresh counters plus a collector over the swarm's health."""

    def __init__(self, health: Callable[[], SwarmHealth]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.refreshes = Counter("swarmnode_monitor_refreshes_total", "Reads of the swarm's records", registry=r)
        self.refresh_failures = Counter(
            "swarmnode_monitor_refresh_failures_total", "Reads of the swarm's records that failed", registry=r
        )
        self.refresh_seconds = Histogram(
            "swarmnode_monitor_refresh_duration_seconds", "Time to read every model's records", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.dead_verdicts_seen = Counter(
            "swarmnode_swarm_dead_verdicts_seen_total", "Dead verdicts first seen by this monitor", ["model"],
            registry=r,
        )  # fmt: skip
        Gauge("swarmnode_monitor_build_info", "Version of this monitor (value 1)", ["version"], registry=r).labels(
            swarmnode.__version__
        ).set(1)
        r.register(_HealthCollector(health))


class _HealthCollector:
    def __init__(self, health: Callable[[], SwarmHealth]):
        self.health = health

    def collect(self):
        h = self.health()
        yield GaugeMetricFamily("swarmnode_swarm_up", "1 if the last read of the swarm succeeded", value=h.reachable)
        yield GaugeMetricFamily(
            "swarmnode_swarm_last_refresh_timestamp_seconds", "Unix time of the last successful read",
            value=h.refreshed_at,
        )  # fmt: skip
        fams = {
            "blocks": _family("swarmnode_swarm_blocks", "Transformer blocks of the model", ["model"]),
            "replicas": _family("swarmnode_swarm_block_replicas", "ONLINE nodes serving a block", ["model", "block"]),
            "throughput": _family(
                "swarmnode_swarm_block_throughput_tokens_per_second",
                "Advertised tokens/s of the ONLINE nodes serving a block, summed", ["model", "block"],
            ),
            "coverage": _family(
                "swarmnode_swarm_coverage_ratio", "Fraction of blocks with at least one ONLINE node", ["model"]
            ),
            "min": _family("swarmnode_swarm_min_block_replicas", "Replicas of the weakest block", ["model"]),
            "states": _family("swarmnode_swarm_nodes", "Nodes by state", ["model", "state"]),
            "dead": _family("swarmnode_swarm_dead_verdicts", "Gossip dead verdicts in the DHT now", ["model"]),
            "versions": _family("swarmnode_swarm_nodes_by_version", "Live nodes by version", ["model", "version"]),
            "step": _family(
                "swarmnode_swarm_node_step_seconds",
                "Clients' median compute time of one token through a node's span", ["model", "peer", "node"],
            ),
            "node_tp": _family(
                "swarmnode_swarm_node_throughput_tokens_per_second", "A node's advertised tokens/s per block",
                ["model", "peer", "node"],
            ),
            "node_busy": _family(
                "swarmnode_swarm_node_busy_ratio", "A node's reported busy fraction", ["model", "peer", "node"]
            ),
            "seen": _family(
                "swarmnode_swarm_node_last_seen_seconds", "Seconds since a node's newest announcement",
                ["model", "peer", "node"],
            ),
        }  # fmt: skip
        for m in h.models:
            fams["blocks"].add_metric([m.model_id], m.num_blocks)
            for block, (count, tokens) in enumerate(zip(m.replicas, m.throughput, strict=True)):
                fams["replicas"].add_metric([m.model_id, str(block)], count)
                fams["throughput"].add_metric([m.model_id, str(block)], tokens)
            fams["coverage"].add_metric([m.model_id], m.coverage)
            fams["min"].add_metric([m.model_id], m.min_replicas)
            for state in NODE_STATES:
                fams["states"].add_metric([m.model_id, state], m.nodes_by_state.get(state, 0))
            fams["dead"].add_metric([m.model_id], m.dead_verdicts)
            for version, count in sorted(m.versions.items()):
                fams["versions"].add_metric([m.model_id, version], count)
            for n in m.nodes:
                labels = [m.model_id, n.peer_id, n.name]
                fams["seen"].add_metric(labels, n.last_seen_s)
                if n.state in ("DEAD", "OFFLINE"):
                    continue  # a gone node's last numbers would read as live ones
                fams["node_tp"].add_metric(labels, n.throughput)
                if n.busy is not None:
                    fams["node_busy"].add_metric(labels, n.busy)
                if n.step_s is not None:
                    fams["step"].add_metric(labels, n.step_s)
        yield from fams.values()


def _family(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)
