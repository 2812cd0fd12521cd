"""The monitor's decisions as pure functions: swarm health from hand-made snapshots, its
Prometheus series, the file-SD targets, and a monitor that cannot reach its swarm."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from swarmnode.monitor import health as health_mod
from swarmnode.monitor.exporter import MonitorMetrics
from swarmnode.monitor.health import SwarmHealth, health_json, model_health, recall, scrape_targets
from swarmnode.monitor.service import SwarmMonitor, write_targets
from swarmnode.records import DeadVerdict, ModelRecord, NodeRecord, NodeState, SwarmSnapshot

NOW = 1000.0
MODEL = ModelRecord("m", num_blocks=6, family="llama")


def node(peer: str, start: int, end: int, state=NodeState.ONLINE, **kw) -> NodeRecord:
    defaults = {"inference_rps": 100.0, "timestamp": NOW - 2, "version": "0.1.0", "metrics_addr": f"{peer}:9156"}
    return NodeRecord(peer, state, start, end, **{**defaults, **kw})


def snapshot(*records: NodeRecord, dead=None, shared=None) -> SwarmSnapshot:
    """``dead``: corroborated verdicts, each also read as a verdict from another node."""
    nodes = {r.peer_id: r for r in records}
    verdicts = tuple(DeadVerdict(p, i, next((q for q in nodes if q != p), "?")) for p, i in (dead or {}).items())
    return SwarmSnapshot("m", 6, nodes, dead=dead or {}, shared=shared or {}, verdicts=verdicts)


def test_coverage_replicas_gaps_and_the_weakest_block():
    h = model_health(snapshot(node("a", 0, 3), node("b", 0, 2, inference_rps=50.0), node("c", 4, 6)), MODEL, NOW)
    assert h.replicas == (2, 2, 1, 0, 1, 1)
    assert h.throughput == (150.0, 150.0, 100.0, 0.0, 100.0, 100.0)
    assert h.coverage == pytest.approx(5 / 6)
    assert h.min_replicas == 0
    assert h.gaps == ((3, 4),)
    assert h.nodes_by_state["ONLINE"] == 3


def test_a_dead_verdict_makes_a_node_dead_and_opens_its_blocks_but_a_goodbye_stays_offline():
    records = (node("a", 0, 3, incarnation=2), node("b", 3, 6), node("c", 3, 6, state=NodeState.OFFLINE))
    h = model_health(snapshot(*records, dead={"a": 2, "c": 0}), MODEL, NOW)
    states = {n.peer_id: n.state for n in h.nodes}
    assert states == {"a": "DEAD", "b": "ONLINE", "c": "OFFLINE"}
    assert h.replicas == (0, 0, 0, 1, 1, 1) and h.coverage == 0.5 and h.gaps == ((0, 3),)
    assert h.dead_verdicts == 2
    assert h.versions == {"0.1.0": 1}  # the version mix counts live nodes only
    # an older verdict does not cover a restarted node
    assert model_health(snapshot(node("a", 0, 6, incarnation=3), dead={"a": 2}), MODEL, NOW).nodes[0].state == "ONLINE"


def test_node_details_last_seen_and_the_step_time_clients_shared():
    shared = {"client1": {"a": {"per_block_s": 0.002, "samples": 3}}, "client2": {"a": {"per_block_s": 0.004}}}
    h = model_health(snapshot(node("a", 0, 3, busy=0.5, public_name="alice", timestamp=NOW - 7)), MODEL, NOW)
    assert h.nodes[0].step_s is None
    h = model_health(snapshot(node("a", 0, 3, busy=0.5, public_name="alice", timestamp=NOW - 7), shared=shared),
                     MODEL, NOW)  # fmt: skip
    (a,) = h.nodes
    assert a.name == "alice" and a.busy == 0.5 and a.last_seen_s == 7.0
    assert a.step_s == pytest.approx(3 * 0.003)  # the median over publishers, times the node's blocks
    assert model_health(snapshot(node("b", 0, 3)), MODEL, NOW).nodes[0].busy is None  # busy -1: not reported


def test_the_monitor_counts_verdicts_of_members_only():
    records = {"a": node("a", 0, 3), "b": node("b", 3, 6)}
    verdicts = (DeadVerdict("x", 5, "a"), DeadVerdict("x", 7, "b"), DeadVerdict("y", 1, "outsider"),
                DeadVerdict("a", 1, "a"))  # fmt: skip
    snap = SwarmSnapshot("m", 6, records, verdicts=verdicts)
    assert health_mod.verdict_subjects(snap) == {"x": 7}
    assert model_health(snap, MODEL, NOW).dead_verdicts == 1


def test_a_node_whose_record_expired_stays_listed_as_dead_until_forgotten():
    first = snapshot(node("a", 0, 3), node("b", 3, 6), node("c", 3, 6, state=NodeState.OFFLINE))
    seen, vanished, memory = recall(first, {}, NOW, retention_s=60)
    assert vanished == frozenset() and set(memory) == {"a", "b", "c"}
    later = snapshot(node("b", 3, 6))  # a crashed and c left: their records expired
    seen, vanished, memory = recall(later, memory, NOW + 10, retention_s=60)
    h = model_health(seen, MODEL, NOW + 10, vanished)
    assert {n.peer_id: n.state for n in h.nodes} == {"a": "DEAD", "b": "ONLINE", "c": "OFFLINE"}
    assert h.replicas == (0, 0, 0, 1, 1, 1) and h.dead_verdicts == 0  # no verdict was read: none is counted
    assert h.nodes[0].last_seen_s == 12.0
    seen, vanished, memory = recall(later, memory, NOW + 100, retention_s=60)
    assert set(seen.nodes) == {"b"} and vanished == frozenset()  # forgotten after the retention time


def test_per_node_rows_are_capped(monkeypatch):
    monkeypatch.setattr(health_mod, "MAX_NODES_PER_MODEL", 2)
    h = model_health(snapshot(*(node(f"p{i}", 0, 6) for i in range(5))), MODEL, NOW)
    assert len(h.nodes) == 2 and h.nodes_omitted == 3
    assert h.replicas[0] == 5  # coverage still counts every node


def test_scrape_targets_list_live_nodes_with_their_labels():
    h = model_health(snapshot(node("a", 0, 3), node("b", 3, 6, metrics_addr=""), node("c", 3, 6), dead={"c": 0}),
                     MODEL, NOW)  # fmt: skip
    groups = scrape_targets(SwarmHealth(models=(h,), refreshed_at=1.0))
    assert groups == [{"targets": ["a:9156"], "labels": {"model": "m", "peer": "a", "node": "a"}}]


def test_write_targets_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sd" / "nodes.json"
    write_targets(path, [{"targets": ["x:1"], "labels": {}}])
    write_targets(path, [])
    assert json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["nodes.json"]  # no temporary file left behind


def test_monitor_series_bounded_labels_and_values():
    h = model_health(snapshot(node("a", 0, 3, busy=0.25), node("b", 3, 6), dead={"b": 0}), MODEL, NOW)
    metrics = MonitorMetrics(lambda: SwarmHealth(models=(h,), refreshed_at=time.time()))
    metrics.dead_verdicts_seen.labels("m").inc()
    found = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert all(name.startswith("swarmnode_") for name in found)
    value = {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples} for f in found.values()}
    assert value["swarmnode_swarm_up"] == {(): 1.0}
    assert value["swarmnode_swarm_coverage_ratio"] == {(("model", "m"),): 0.5}
    assert value["swarmnode_swarm_block_replicas"][(("block", "4"), ("model", "m"))] == 0.0
    assert value["swarmnode_swarm_nodes"][(("model", "m"), ("state", "DEAD"))] == 1.0
    assert value["swarmnode_swarm_dead_verdicts"] == {(("model", "m"),): 1.0}
    assert found["swarmnode_swarm_dead_verdicts_seen"].type == "counter"
    # a dead node keeps its last-seen age but exports no live numbers
    assert {dict(k)["peer"] for k in value["swarmnode_swarm_node_busy_ratio"]} == {"a"}
    assert {dict(k)["peer"] for k in value["swarmnode_swarm_node_last_seen_seconds"]} == {"a", "b"}
    assert json.loads(json.dumps(health_json(SwarmHealth(models=(h,)))))["models"][0]["gaps"] == [[3, 6]]


def dead_peer() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWCLrqJDYu4ozFRyNL9ceo1b5MVXkazDZreXr1EQXcp2Ve"


@pytest.mark.timeout(120)
def test_a_monitor_that_cannot_reach_its_swarm_says_so_and_keeps_serving():
    monitor = SwarmMonitor([dead_peer()], host="127.0.0.1", port=0, refresh_period=0.5)
    try:
        base = f"http://127.0.0.1:{monitor.port}"
        deadline = time.monotonic() + 90
        while not monitor.health.error and time.monotonic() < deadline:
            time.sleep(0.2)
        report = json.load(urllib.request.urlopen(f"{base}/api/health", timeout=5))
        assert report["reachable"] is False and report["error"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert err.value.code == 503
        assert b"SwarmBee swarm health" in urllib.request.urlopen(f"{base}/", timeout=5).read()
        assert b"swarmnode_swarm_up 0.0" in urllib.request.urlopen(f"{base}/metrics", timeout=5).read()
    finally:
        monitor.close()
