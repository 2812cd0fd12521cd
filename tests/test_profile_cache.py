"""A node's measured speed kept on disk and refreshed by service: the cache and the served
estimate as plain objects, then a node that starts again from its stored profile and writes back
what service measured."""

import json

import pytest
import torch

from swarmnode import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.server.profile_cache import ProfileCache, ServedSpeed, profile_key

GOOD = {"inference_rps": 400.0, "prefill_rps": 9000.0, "batch_costs": [0.001, 0.0012]}


def test_profiles_round_trip_by_key_and_malformed_ones_are_measured_anew(tmp_path):
    cache = ProfileCache(tmp_path / "profiles")
    key = profile_key({"model": "abc", "span": [0, 4], "dtype": "float32", "quant": "none"})
    assert cache.load(key) is None
    cache.save(key, GOOD)
    assert cache.load(key) == GOOD
    assert key != profile_key({"model": "abc", "span": [0, 4], "dtype": "float32", "quant": "nf4"})
    assert key == profile_key({"quant": "none", "dtype": "float32", "span": [0, 4], "model": "abc"})
    for bad in ({**GOOD, "inference_rps": -1}, {**GOOD, "batch_costs": [1.0]}, [1, 2], {"x": 1}):
        (tmp_path / "profiles" / f"{key}.json").write_text(json.dumps(bad))
        assert cache.load(key) is None, bad
    (tmp_path / "profiles" / f"{key}.json").write_text("{not json")
    assert cache.load(key) is None


def test_served_speed_follows_single_session_iterations_only():
    served = ServedSpeed(blocks=4, smoothing=0.5, min_samples=3)
    for decodes, prompt_tokens, seconds in ((2, 0, 1.0), (1, 16, 1.0), (0, 32, 1.0), (1, 0, 0.0)):
        served.observe(decodes, prompt_tokens, seconds)
    assert served.samples == 0 and served.rps(123.0) == 123.0
    for seconds in (0.008, 0.008):
        served.observe(1, 0, seconds)
    assert served.rps(123.0) == 123.0, "not enough samples yet"
    served.observe(1, 0, 0.016)
    assert served.rps(123.0) == pytest.approx(1 / 0.003)  # (0.002 + 0.004) / 2 per block
    with pytest.raises(ValueError):
        ServedSpeed(blocks=0)


@pytest.mark.swarm
def test_a_node_starts_again_from_its_stored_profile_and_keeps_what_service_measured(tmp_path, llama_path, monkeypatch):
    profiles = tmp_path / "profiles"
    monkeypatch.setenv("SWARMNODE_PROFILES", str(profiles))
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_bootstrap()
        slow = ("--debug-step-delay-ms", "10")
        first = swarm.start_node(llama_path, "0:8", *slow)
        assert "measured" in first.log_path.read_text()
        [stored] = profiles.glob("*.json")
        measured = json.loads(stored.read_text())
        with DistributedModelForCausalLM.from_pretrained(llama_path, initial_peers=swarm.initial_peers) as model:
            model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=40)  # 39 single-session steps
        first.stop(timeout=30)
        served = json.loads(stored.read_text())
        assert served["inference_rps"] != measured["inference_rps"], "service's figure was kept"
        assert served["batch_costs"] == measured["batch_costs"]
        # ~10 ms per step over 8 blocks either way: the two figures agree within a factor of 2
        assert 0.5 < served["inference_rps"] / measured["inference_rps"] < 2

        again = swarm.start_node(llama_path, "0:8", *slow)
        assert f"from {profiles}" in again.log_path.read_text()
        fresh = swarm.start_node(llama_path, "0:8", *slow, "--no-profile-cache")
        assert "measured" in fresh.log_path.read_text()
