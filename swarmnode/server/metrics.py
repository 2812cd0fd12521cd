"""A node's Prometheus metrics and its small HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``).

One registry per node. Counters and histograms are updated where the work happens (the
handler, the cache manager, gossip, the announcer); gauges read the node's current state
through callbacks when scraped, which touch only memory: a scrape never does DHT or
network I/O and never waits for a step. Names follow Prometheus conventions: one
``swarmnode_`` prefix, base units, ``_total`` counters, bounded label values (kinds, error
codes, refusal reasons, member states — never a session or peer id).

The endpoint runs on its own thread (``wsgiref`` with one thread per request), so a scrape
never runs on the event loop either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

from swarmnode.errors import ERROR_CODES
from swarmnode.net.http import HttpEndpoint, respond

logger = logging.getLogger(__name__)
STEP_KINDS = ("decode", "prefill", "forward")
# From 100 µs (a tiny model's decode step) to 30 s (a long prompt on a slow device).
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REFUSAL_REASONS = (
    "cache_exhausted", "peer_limit", "at_capacity", "rate_limited", "unauthorized", "not_online", "model_mismatch",
    "invalid_request",
)  # fmt: skip
MEMBER_STATES = ("ALIVE", "SUSPECT", "DEAD")


class NodeMetrics:
    """Every metric of one node. ``state`` gives the node's live numbers at scrape time."""

    def __init__(self, state: Callable[[], dict]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.step_seconds = Histogram(
            "swarmnode_step_duration_seconds", "Compute time of one step, by kind", ["kind"],
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("swarmnode_tokens_processed_total", "Tokens run through this node's blocks", ["kind"],
                              registry=r)  # fmt: skip
        self.sessions_opened = Counter("swarmnode_sessions_opened_total", "Inference sessions admitted", registry=r)
        self.sessions_refused = Counter(
            "swarmnode_sessions_refused_total", "Inference sessions refused, by reason", ["reason"], registry=r
        )
        self.errors = Counter("swarmnode_errors_total", "Error answers sent, by error code", ["code"], registry=r)
        self.probe_failures = Counter(
            "swarmnode_gossip_probe_failures_total", "Gossip probes of a member that got no answer", registry=r
        )
        self.announce_failures = Counter(
            "swarmnode_announce_failures_total", "Announcements of this node's record that failed", registry=r
        )
        self.span_moves = Counter(
            "swarmnode_span_moves_total", "Span changes by rebalancing, by outcome (moved, called_off)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "swarmnode_batch_size", "Decoding steps per scheduler iteration (continuous batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.iteration_seconds = Histogram(
            "swarmnode_scheduler_iteration_seconds", "Wall time of one scheduler iteration (decodes + a prompt chunk)",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.build = Gauge("swarmnode_build_info", "Version, model and dtype of this node (value 1)",
                           ["version", "model", "dtype"], registry=r)  # fmt: skip
        for kind in STEP_KINDS:  # every series exists from the start, so dashboards see zeros, not gaps
            self.step_seconds.labels(kind)
            self.tokens.labels(kind)
        for reason in REFUSAL_REASONS:
            self.sessions_refused.labels(reason)
        for code in ERROR_CODES:
            self.errors.labels(code)
        for outcome in ("moved", "called_off"):
            self.span_moves.labels(outcome)
        r.register(_StateCollector(state))

    def observe_iteration(self, decodes: int, prompt_tokens: int, seconds: float) -> None:
        """One scheduler iteration (called from the compute thread; prometheus_client is thread-safe)."""
        if decodes:
            self.batch_size.observe(decodes)
        self.iteration_seconds.observe(seconds)

    def observe_step(self, kind: str, seconds: float, tokens: int) -> None:
        self.step_seconds.labels(kind).observe(seconds)
        self.tokens.labels(kind).inc(tokens)


class _StateCollector:
    """Gauges read from the node's state at scrape time (memory only)."""

    def __init__(self, state: Callable[[], dict]):
        self.state = state

    def collect(self):
        s = self.state()
        yield _gauge("swarmnode_sessions_active", "Inference sessions open on this node", s["sessions_active"])
        yield _gauge("swarmnode_kv_cache_used_bytes", "KV-cache bytes reserved by open sessions", s["cache_used_bytes"])
        yield _gauge("swarmnode_kv_cache_budget_bytes", "KV-cache bytes this node may reserve", s["cache_budget_bytes"])
        yield _gauge("swarmnode_weights_bytes", "Bytes of the span's weights as loaded", s.get("weights_bytes", 0))
        yield _gauge(
            "swarmnode_resident_memory_bytes", "Resident memory of the node process", s.get("resident_bytes", 0)
        )
        yield _gauge("swarmnode_span_start_block", "First block this node serves", s["start"])
        yield _gauge("swarmnode_span_end_block", "One past the last block this node serves", s["end"])
        yield _gauge("swarmnode_busy_ratio", "Fraction of the last 3 s spent computing", max(0.0, s["busy"]))
        yield _gauge(
            "swarmnode_step_slowdown_ratio",
            "Decoding steps' time in the node over their compute, mean of the last 3 s (1 = no waiting)",
            max(1.0, s.get("slowdown", 1.0)),
        )
        yield _gauge(
            "swarmnode_throughput_tokens_per_second", "Advertised inference throughput per block", s["inference_rps"]
        )
        states = GaugeMetricFamily(
            "swarmnode_node_state", "This node's state (1 for the current one)", labels=["state"]
        )
        for name in ("JOINING", "ONLINE", "DRAINING", "OFFLINE"):
            states.add_metric([name], 1.0 if s["state"] == name else 0.0)
        yield states
        members = GaugeMetricFamily("swarmnode_gossip_members", "Gossip members by state", labels=["state"])
        counts = {state: 0 for state in MEMBER_STATES}
        for status in s["members"].values():
            counts[status] = counts.get(status, 0) + 1
        for state, count in counts.items():
            members.add_metric([state], count)
        yield members


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class MetricsServer(HttpEndpoint):
    """Serves ``/metrics``, ``/healthz`` (the process is alive) and ``/readyz`` (200 only while
    ``ready()``) on its own thread; ``close()`` stops it."""

    def __init__(self, metrics: NodeMetrics, ready: Callable[[], bool], host: str, port: int):
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return respond(start_response, "200 OK", "ok\n")
            if path == "/readyz":
                if ready():
                    return respond(start_response, "200 OK", "ready\n")
                return respond(start_response, "503 Service Unavailable", "not ready\n")
            if path in ("/metrics", "/"):
                return metrics_app(environ, start_response)
            return respond(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz\n")

        super().__init__(app, host, port, name="swarmnode-metrics")


def start_metrics_server(metrics: NodeMetrics, ready: Callable[[], bool], host: str, port: int) -> MetricsServer:
    """Bind ``host:port``; if that port is taken (several nodes on one host), a free one instead."""
    try:
        return MetricsServer(metrics, ready, host, port)
    except OSError as e:
        logger.warning("metrics port %d is not free (%s): using another one", port, e)
        return MetricsServer(metrics, ready, host, 0)
