"""Node metrics: Prometheus text format with conventional names, live numbers from a real
swarm, health and readiness endpoints, the address announced in the node's record."""

from __future__ import annotations

import urllib.request

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from swarmnode.server.metrics import NodeMetrics
from tests.conftest import status_cli

STATE = {
    "sessions_active": 2, "cache_used_bytes": 1024, "cache_budget_bytes": 4096, "start": 3, "end": 6, "busy": 0.25,
    "inference_rps": 120.0, "state": "ONLINE", "members": {"a": "ALIVE", "b": "ALIVE", "c": "SUSPECT"},
}  # fmt: skip


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metric_names_types_and_labels_follow_prometheus_conventions():
    metrics = NodeMetrics(lambda: STATE)
    metrics.observe_step("decode", 0.0004, 1)
    metrics.errors.labels("invalid_request").inc()
    found = families(generate_latest(metrics.registry).decode())
    assert all(name.startswith("swarmnode_") for name in found)
    for name in ("swarmnode_tokens_processed", "swarmnode_sessions_opened", "swarmnode_sessions_refused",
                 "swarmnode_errors", "swarmnode_gossip_probe_failures", "swarmnode_announce_failures"):  # fmt: skip
        assert found[name].type == "counter", name  # exposed with the _total suffix
    step = found["swarmnode_step_duration_seconds"]
    assert step.type == "histogram"
    buckets = [s for s in step.samples if s.name.endswith("_bucket") and s.labels["kind"] == "decode"]
    assert any(float(s.labels["le"]) <= 0.0005 and s.value == 1 for s in buckets)  # sub-millisecond resolution
    members = {s.labels["state"]: s.value for s in found["swarmnode_gossip_members"].samples}
    assert members == {"ALIVE": 2, "SUSPECT": 1, "DEAD": 0}
    assert found["swarmnode_kv_cache_budget_bytes"].samples[0].value == 4096
    assert found["swarmnode_busy_ratio"].samples[0].value == 0.25
    labels = {k for f in found.values() for s in f.samples for k in s.labels}
    assert labels <= {"kind", "reason", "code", "state", "le", "version", "model", "dtype"}  # bounded: no ids


@pytest.mark.swarm
def test_a_serving_node_exports_what_it_did(llama_swarm, llama_client):
    node = next(p for p in llama_swarm.processes if p.info.get("blocks") == "0:3")
    base = f"http://{node.info['metrics']}"
    llama_client.generate(torch.tensor([[72, 101, 108, 108, 111]]), max_new_tokens=6)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        found = families(response.read().decode())
    tokens = {
        s.labels["kind"]: s.value for s in found["swarmnode_tokens_processed"].samples if s.name.endswith("_total")
    }
    assert tokens["prefill"] >= 5 and tokens["decode"] >= 5
    assert sum(s.value for s in found["swarmnode_sessions_opened"].samples if s.name.endswith("_total")) >= 1
    (build,) = found["swarmnode_build_info"].samples
    assert build.labels["dtype"] == "float32" and build.value == 1
    assert found["swarmnode_span_end_block"].samples[0].value == 3
    states = {s.labels["state"]: s.value for s in found["swarmnode_node_state"].samples}
    assert states["ONLINE"] == 1
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
            assert response.status == 200
    announced = {n["peer_id"]: n["metrics_addr"] for n in status_cli(llama_swarm.initial_peers)["nodes"]}
    assert announced[node.info["peer_id"]] == node.info["metrics"]
