"""Build monitoring/dashboards/swarm-health.json with Grafana's foundation SDK (``make dashboard``).

The checked-in JSON is this script's output; tests/test_dashboard.py fails when it is out of
date, and evaluates every query below against a real Prometheus scraping a live swarm.

Node series carry ``model``, ``peer`` and ``node`` labels from the monitor's file-SD targets;
the monitor's own series carry ``model`` themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DATASOURCE_UID = "swarmbee-prometheus"  # fixed in monitoring/grafana/provisioning/datasources/prometheus.yml
DASHBOARD_UID = "swarmbee-swarm-health"
OUTPUT = Path(__file__).resolve().parent.parent / "monitoring" / "dashboards" / "swarm-health.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
M = 'model="$model"'
RATE = "[$__rate_interval]"
TOKENS_PER_S = "suffix: tokens/s"  # a Grafana custom unit


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def _common(panel, title: str, description: str, unit: str, width: int, height: int = 8):
    return panel.title(title).description(description).unit(unit).datasource(DATASOURCE).span(width).height(height)


def stat_panel(title: str, description: str, unit: str, expr: str, width: int = 6) -> stat.Panel:
    return _common(stat.Panel(), title, description, unit, width, 5).with_target(query(expr))


def series_panel(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12):
    panel = _common(timeseries.Panel(), title, description, unit, width)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> dict:
    """The dashboard as a JSON-ready dict."""
    model_variable = (
        dashboard.QueryVariable("model")
        .label("model")
        .description("Model id in the swarm")
        .datasource(DATASOURCE)
        .query({"query": "label_values(swarmnode_swarm_blocks, model)", "refId": "model"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
    )
    d = (
        dashboard.Dashboard("SwarmBee swarm health")
        .uid(DASHBOARD_UID)
        .description(
            "Is the model fully served, by whom, and is it healthy? Fed by swarmnode monitor and node metrics."
        )
        .tags(["swarmbee"])
        .refresh("10s")
        .time("now-30m", "now")
        .with_variable(model_variable)
    )
    ids = iter(range(1, 1000))
    d = d.with_row(dashboard.Row("Coverage").id(next(ids)))
    for panel in (
        stat_panel("Coverage", "Fraction of blocks served by at least one ONLINE node (below 100%: a gap, "
                   "generation cannot pass).", "percentunit", f"swarmnode_swarm_coverage_ratio{{{M}}}"),
        stat_panel("Weakest block", "Replicas of the least-served block: 1 means a single node's failure opens a "
                   "gap.", "none", f"swarmnode_swarm_min_block_replicas{{{M}}}"),
        stat_panel("Blocks", "Transformer blocks of the model.", "none", f"swarmnode_swarm_blocks{{{M}}}"),
        stat_panel("Monitor reads the swarm", "1 while the monitor's last read of the DHT succeeded.", "bool",
                   "max(swarmnode_swarm_up)"),
        _common(bargauge.Panel(), "Replicas per block", "ONLINE nodes serving each block now.", "none", 24, 6)
        .with_target(query(f"swarmnode_swarm_block_replicas{{{M}}}", "block {{block}}", instant=True)),
        series_panel("Nodes by state", "Nodes of the model by state (DEAD: a gossip verdict covers the node).",
                     "none", query(f"swarmnode_swarm_nodes{{{M}}}", "{{state}}")),
        series_panel("Throughput per block", "Advertised tokens/s of the ONLINE nodes serving each block, summed.",
                     TOKENS_PER_S,
                     query(f"swarmnode_swarm_block_throughput_tokens_per_second{{{M}}}", "block {{block}}")),
    ):  # fmt: skip
        d = d.with_panel(panel.id(next(ids)))
    d = d.with_row(dashboard.Row("Load and latency").id(next(ids)))
    for panel in (
        series_panel("Swarm tokens/s", "Tokens through the whole model per second: block-tokens processed by "
                     "every node, divided by the model's blocks.", TOKENS_PER_S,
                     query(f"sum(rate(swarmnode_tokens_processed_total{{{M}}}{RATE}) * on(instance) group_left() "
                           f"(swarmnode_span_end_block{{{M}}} - swarmnode_span_start_block{{{M}}})) "
                           f"/ scalar(max(swarmnode_swarm_blocks{{{M}}}))", "tokens/s")),
        series_panel("Tokens/s per node", "Tokens run through each node's blocks per second, by step kind.",
                     TOKENS_PER_S, query(f"sum by (node, kind) (rate(swarmnode_tokens_processed_total{{{M}}}{RATE}))",
                                   "{{node}} {{kind}}")),
        series_panel("Decode step latency p50 / p95", "Compute time of one decode step on each node (blocks only,"
                     " no network).", "s",
                     query(f'histogram_quantile(0.5, sum by (le, node) (rate(swarmnode_step_duration_seconds_bucket'
                           f'{{{M},kind="decode"}}{RATE})))', "{{node}} p50"),
                     query(f'histogram_quantile(0.95, sum by (le, node) (rate(swarmnode_step_duration_seconds_bucket'
                           f'{{{M},kind="decode"}}{RATE})))', "{{node}} p95", ref="B")),
        series_panel("Step time seen by clients", "Clients' median compute time of one token through each node's "
                     "span, from the routing observations they share in the DHT.", "s",
                     query(f"swarmnode_swarm_node_step_seconds{{{M}}}", "{{node}}")),
        series_panel("Busy fraction", "Fraction of the last 3 s each node spent computing.", "percentunit",
                     query(f"swarmnode_busy_ratio{{{M}}}", "{{node}}")),
        series_panel("Step slowdown", "Decoding steps' time in each node over their compute, mean of the last 3 s: "
                     "1 = no waiting. Routers price a node's load by it.", "none",
                     query(f"swarmnode_step_slowdown_ratio{{{M}}}", "{{node}}")),
        series_panel("Sessions active", "Inference sessions open on each node.", "none",
                     query(f"sum by (node) (swarmnode_sessions_active{{{M}}})", "{{node}}")),
        series_panel("KV-cache use", "KV-cache bytes reserved by open sessions over each node's budget.",
                     "percentunit", query(f"sum by (node) (swarmnode_kv_cache_used_bytes{{{M}}}) / sum by (node) "
                                          f"(swarmnode_kv_cache_budget_bytes{{{M}}})", "{{node}}")),
        series_panel("Sessions opened and refused", "Sessions admitted per second, and refused per second by "
                     "reason.", "cps",
                     query(f"sum(rate(swarmnode_sessions_opened_total{{{M}}}{RATE}))", "opened"),
                     query(f"sum by (reason) (rate(swarmnode_sessions_refused_total{{{M}}}{RATE}))",
                           "refused: {{reason}}", ref="B")),
    ):  # fmt: skip
        d = d.with_panel(panel.id(next(ids)))
    d = d.with_row(dashboard.Row("Failures").id(next(ids)))
    for panel in (
        series_panel("Errors by class", "Error answers sent by nodes per second, by error code.", "cps",
                     query(f"sum by (code) (rate(swarmnode_errors_total{{{M}}}{RATE}))", "{{code}}")),
        series_panel("Dead verdicts and suspicions", "Dead verdicts first seen by the monitor, verdicts in the DHT "
                     "now, and the most SUSPECT members any node holds.", "none",
                     query(f"increase(swarmnode_swarm_dead_verdicts_seen_total{{{M}}}{RATE})", "new verdicts"),
                     query(f"swarmnode_swarm_dead_verdicts{{{M}}}", "verdicts in the DHT", ref="B"),
                     query(f'max(swarmnode_gossip_members{{{M},state="SUSPECT"}})', "suspects (max over nodes)",
                           ref="C")),
        series_panel("Gossip probe and announce failures", "Probes that got no answer and failed announcements "
                     "per second, per node.", "cps",
                     query(f"sum by (node) (rate(swarmnode_gossip_probe_failures_total{{{M}}}{RATE}))",
                           "{{node}} probes"),
                     query(f"sum by (node) (rate(swarmnode_announce_failures_total{{{M}}}{RATE}))",
                           "{{node}} announces", ref="B")),
        series_panel("Span moves (rebalancing)", "Nodes that moved their span where the swarm needed it, and "
                     "moves called off because the swarm changed while loading, per second.", "cps",
                     query(f"sum by (outcome) (rate(swarmnode_span_moves_total{{{M}}}{RATE}))", "{{outcome}}")),
        series_panel("Version mix", "Live nodes per software version.", "none",
                     query(f"swarmnode_swarm_nodes_by_version{{{M}}}", "{{version}}")),
    ):  # fmt: skip
        d = d.with_panel(panel.id(next(ids)))
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in JSON is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run `make dashboard`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
