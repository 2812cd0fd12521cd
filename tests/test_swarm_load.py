"""A node at capacity refuses new sessions with a retryable NodeBusy, and clients treat it as
load: another replica, or a wait, never a ban or a pheromone penalty."""

import threading
import time
import urllib.request

import pytest
import torch

from swarmnode import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm

pytestmark = pytest.mark.swarm
PROMPT = torch.tensor([[7, 14, 21, 28, 35, 42]])


def metric(node, name: str) -> float:
    metrics = urllib.request.urlopen(f"http://{node.info['metrics']}/metrics", timeout=5).read().decode()
    line = next((x for x in metrics.splitlines() if x.startswith(name + " ")), "")
    return float(line.split()[-1]) if line else 0.0


def refused_at_capacity(node) -> float:
    return metric(node, 'swarmnode_sessions_refused_total{reason="at_capacity"}')


def test_a_node_at_capacity_sends_clients_elsewhere_or_makes_them_wait(tmp_path, llama_path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(llama_path).generate(PROMPT, max_new_tokens=12, do_sample=False)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        # A step-time target of 1 µs: each node takes one session at a time (an idle node always admits one).
        # Sessions idle for 20 s are reclaimed (longer than a refusal's longest hint, 10 s, so the
        # open sessions stay while the third one waits).
        flags = ("--max-step-ms", "0.001", "--session-idle-timeout", "20")
        nodes = [swarm.start_node(llama_path, "0:8", *flags, wait=False) for _ in range(2)]
        for node in nodes:
            swarm.wait_online(node)
        with DistributedModelForCausalLM.from_pretrained(llama_path, initial_peers=swarm.initial_peers) as model:
            first, second = model.inference_session(max_length=32), model.inference_session(max_length=32)
            assert torch.equal(model.generate(PROMPT, max_new_tokens=12, session=first), reference)
            assert torch.equal(model.generate(PROMPT, max_new_tokens=12, session=second), reference)
            assert {first.chain[0].peer_id, second.chain[0].peer_id} == {n.info["peer_id"] for n in nodes}

            # Both nodes hold a session: a third waits until one is closed, then runs there.
            releaser = threading.Timer(2.0, first.close)
            releaser.start()
            began = time.monotonic()
            with model.inference_session(max_length=32) as third:
                assert torch.equal(model.generate(PROMPT, max_new_tokens=12, session=third), reference)
            waited = time.monotonic() - began
            releaser.join()
            second.close()
            assert waited >= 1.5, f"the third session did not wait for capacity ({waited:.2f} s)"
            assert third.chain[0].peer_id == first.chain[0].peer_id
            assert not third.failovers or all(
                "NodeAtCapacity" in e.reason or "NodeBusy" in e.reason for e in third.failovers
            )
            router = model.remote.router
            assert not router.bans.banned(), "a node at capacity is not banned"
            assert all(e.failures == 0 for e in router.estimates.values()), "nor counted as failed"
            assert sum(refused_at_capacity(n) for n in nodes) >= 1

            # A session left open and idle is reclaimed: its node frees the KV cache it held.
            held = model.inference_session(max_length=32)
            model.generate(PROMPT, max_new_tokens=2, session=held)
            node = next(n for n in nodes if n.info["peer_id"] == held.chain[0].peer_id)
            assert metric(node, "swarmnode_sessions_active") == 1 and metric(node, "swarmnode_kv_cache_used_bytes") > 0
            deadline = time.monotonic() + 40
            while metric(node, "swarmnode_sessions_active") and time.monotonic() < deadline:
                time.sleep(0.5)
            assert metric(node, "swarmnode_sessions_active") == 0 and metric(node, "swarmnode_kv_cache_used_bytes") == 0
            held.close()


def test_a_node_that_queues_admits_sessions_that_stay_away(tmp_path, llama_path):
    """A node serving one step at a time projects a newcomer's step from how long its sessions
    stay away between steps (server/admission.py): two open but idle sessions do not keep out a
    third, where projecting all three steps at once (3 x 50 ms, above the 120 ms target) would."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(llama_path).generate(PROMPT, max_new_tokens=4, do_sample=False)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        flags = ("--no-batching", "--debug-step-delay-ms", "50", "--max-step-ms", "120", "--no-profile-cache")
        node = swarm.start_node(llama_path, "0:8", *flags)
        assert "one step at a time" in node.log_path.read_text()
        # A refused third session would wait 3 s, then fail: the test ends either way.
        options = dict(initial_peers=swarm.initial_peers, busy_wait=3.0, wait_for_servers=3.0)
        with DistributedModelForCausalLM.from_pretrained(llama_path, **options) as model:
            held = [model.inference_session(max_length=32) for _ in range(2)]
            for session in held:  # a prompt and 3 decoding steps each: the node has measured their gaps
                assert torch.equal(model.generate(PROMPT, max_new_tokens=4, session=session), reference)
            with model.inference_session(max_length=32) as third:
                assert torch.equal(model.generate(PROMPT, max_new_tokens=4, session=third), reference)
            assert not third.failovers, "admitted at once"
            assert refused_at_capacity(node) == 0 and metric(node, "swarmnode_sessions_active") == 2
            for session in held:
                session.close()


def test_a_stateless_forward_larger_than_a_unary_message_works(tmp_path):
    """3 MiB of hidden states (batch 2 × 1,500 tokens × hidden 256) through a stateless forward:
    over the transport's 2 MiB unary limit, so it must travel on a stream. Then a session whose
    prompt is as large (chunked by the node's scheduler: 6 chunks of at most 256 tokens) gives
    the tokens local generation gives."""
    from transformers import AutoModelForCausalLM

    from swarmnode.models.tiny import tiny_checkpoint

    path = str(tiny_checkpoint("demo-llama", root=tmp_path / "demo-llama"))
    ids = torch.randint(0, 256, (2, 1500), generator=torch.Generator().manual_seed(0))
    assert ids.numel() * 256 * 4 > 2 * 1024**2
    expected = AutoModelForCausalLM.from_pretrained(path)(ids).logits
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_bootstrap()
        swarm.start_node(path, "0:8", "--max-cache-share-per-peer", "1")  # the session's cache: 3/4 of the budget
        with DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers) as model:
            logits = model(ids)
            assert not model.remote.router.bans.banned()
            generated = model.generate(ids, max_new_tokens=3)
    local = AutoModelForCausalLM.from_pretrained(path).generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(generated, local)
    assert torch.allclose(logits, expected, atol=1e-3, rtol=1e-3)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
