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
    "slowdown": 1.5, "inference_rps": 120.0, "state": "ONLINE", "members": {"a": "ALIVE", "b": "ALIVE", "c": "SUSPECT"},
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
    assert found["swarmnode_step_slowdown_ratio"].samples[0].value == 1.5
    labels = {k for f in found.values() for s in f.samples for k in s.labels}
    bounded = {"kind", "reason", "code", "outcome", "state", "le", "version", "model", "dtype"}
    assert labels <= bounded  # no ids


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


@pytest.mark.swarm
def test_scraping_every_node_during_generation_does_not_change_step_latency(llama_swarm, llama_client):
    """Alternating rounds without and with a scraper fetching every node's /metrics up to 50 times
    a second (750 times Prometheus' default rate): the median node time per step and the median
    time per token stay within noise."""
    import statistics
    import threading

    urls = [f"http://{p.info['metrics']}/metrics" for p in llama_swarm.processes if "metrics" in p.info]
    assert len(urls) == 3
    prompt = torch.tensor([[11, 22, 33, 44, 55, 66]])

    def generation_round(into: list[tuple[float, float]]) -> None:
        for _ in range(3):
            with llama_client.inference_session(max_length=64) as session:
                session.tracing = True
                llama_client.generate(prompt, max_new_tokens=32, session=session)
                for trace in session.traces[1:]:  # decode steps only
                    into.append((sum(h.node_ms for h in trace.hops), 1000 * (trace.finished - trace.started)))

    stop, scrapes = threading.Event(), []

    def scrape() -> None:
        while not stop.wait(0.02):
            for url in urls:
                with urllib.request.urlopen(url, timeout=5) as response:
                    scrapes.append(len(response.read()))

    quiet: list[tuple[float, float]] = []
    scraped: list[tuple[float, float]] = []
    generation_round([])  # warm-up
    for _ in range(4):
        generation_round(quiet)
        stop.clear()
        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        generation_round(scraped)
        stop.set()
        scraper.join(10)
    node_q, node_s = (statistics.median(n for n, _ in xs) for xs in (quiet, scraped))
    token_q, token_s = (statistics.median(t for _, t in xs) for xs in (quiet, scraped))
    print(f"median node time per step {node_q:.3f} -> {node_s:.3f} ms ({node_s / node_q:.3f}x); per token "
          f"{token_q:.2f} -> {token_s:.2f} ms ({token_s / token_q:.3f}x); {len(scrapes)} scrapes")  # fmt: skip
    assert len(scrapes) >= 30
    assert node_s / node_q < 1.3 and token_s / token_q < 1.3
