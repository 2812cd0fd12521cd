"""Joining and leaving: --blocks auto placement, bounded NoServersForBlocks, partial loading
as a running node reports it, SIGTERM leaving cleanly, stable bootstrap identities."""

import signal
import time

import psutil
import pytest
import torch

from swarmnode import DistributedModelForCausalLM
from swarmnode.errors import NoServersForBlocks
from swarmnode.launcher import LocalSwarm
from swarmnode.models import block_parameter_count, load_model_spec
from swarmnode.net.protocol import read_response
from tests.conftest import status_cli

pytestmark = pytest.mark.swarm
CACHE_TOKENS = 256


def test_auto_blocks_cover_the_model_and_sigterm_leaves_cleanly(tmp_path, llama_path):
    spec = load_model_spec(llama_path)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    per_block = block_parameter_count(spec) * 4 + 2 * kv_heads * head_dim * 4 * CACHE_TOKENS
    room_for_3 = str(int(3.5 * per_block))
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        args = ("--max-memory", room_for_3, "--cache-tokens", str(CACHE_TOKENS))
        first = swarm.start_node(llama_path, "auto", *args)
        assert (first.info["start"], first.info["end"]) == (0, 3)

        with DistributedModelForCausalLM.from_pretrained(
            llama_path, initial_peers=swarm.initial_peers, wait_for_servers=2
        ) as model:
            began = time.monotonic()
            with pytest.raises(NoServersForBlocks) as info:
                model.generate(prompt, max_new_tokens=2)
            assert info.value.blocks == [3, 4, 5, 6, 7]
            assert 2 <= time.monotonic() - began < 15  # a bounded wait, never a hang

            nodes = [first] + [swarm.start_node(llama_path, "auto", *args) for _ in range(2)]
            spans = [(n.info["start"], n.info["end"]) for n in nodes]
            assert all(end - start == 3 for start, end in spans)
            assert set().union(*(range(s, e) for s, e in spans)) == set(range(8)), spans

            out = model.generate(prompt, max_new_tokens=16)
        from transformers import AutoModelForCausalLM

        expected = AutoModelForCausalLM.from_pretrained(llama_path).generate(prompt, max_new_tokens=16, do_sample=False)
        assert torch.equal(out, expected)

        # SIGTERM: the node announces OFFLINE, exits 0, and takes its DHT process and p2pd with it.
        helpers = psutil.Process(first.pid).children(recursive=True)
        assert any("p2pd" in p.name() for p in helpers)
        first.signal(signal.SIGTERM)
        assert first.popen.wait(timeout=30) == 0
        time.sleep(1)
        assert not [p for p in helpers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        report = status_cli(swarm.initial_peers)
        states = {(n["start"], n["end"]): n["state"] for n in report["nodes"]}
        assert states.get((0, 3)) in (None, "OFFLINE")
        assert report["gaps"] == [[0, 3]]

        # A node whose p2pd died first leaves on SIGTERM too: its calls to the dead daemon on
        # the way out are bounded (net/shutdown.py), where they used to wait for ever.
        second = nodes[1]
        for daemon in [p for p in psutil.Process(second.pid).children(recursive=True) if "p2pd" in p.name()]:
            daemon.kill()
        second.signal(signal.SIGTERM)
        assert second.popen.wait(timeout=45) == 0


def test_running_node_loaded_only_its_span(llama_swarm, llama_client, llama_path):
    node = next(p for p in llama_swarm.processes if p.info.get("blocks") == "6:8")
    stub = llama_client.connection.stub(node.info["peer_id"])
    from hivemind.proto import runtime_pb2

    response = llama_client.connection.run(stub.rpc_info(runtime_pb2.ExpertUID(), timeout=30))
    info, _ = read_response(response, node.info["peer_id"])
    spec = load_model_spec(llama_path)
    total = sum(t.numel() for t in spec.checkpoint.load_tensors(spec.checkpoint.tensor_names).values())
    assert (info["start"], info["end"], info["state"]) == (6, 8, "ONLINE")
    assert 0 < info["loaded_parameters"] / total < 0.40


def test_bootstrap_identity_is_stable(tmp_path):
    identity = str(tmp_path / "keys" / "bootstrap.id")
    peer_ids = []
    for run in range(2):
        with LocalSwarm(tmp_path / f"run{run}") as swarm:
            maddr = swarm.start_bootstrap(identity=identity)
            assert maddr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in maddr
            peer_ids.append(maddr.rsplit("/p2p/", 1)[1])
    assert peer_ids[0] == peer_ids[1]


def test_an_explicit_span_that_does_not_fit_the_memory_budget_is_refused(tmp_path, llama_path):
    spec = load_model_spec(llama_path)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    per_block = block_parameter_count(spec) * 4 + 2 * kv_heads * head_dim * 4 * CACHE_TOKENS
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        args = ("--max-memory", str(int(2.5 * per_block)), "--cache-tokens", str(CACHE_TOKENS))
        for blocks in ("0:3", "3"):
            with pytest.raises(RuntimeError) as info:
                swarm.start_node(llama_path, blocks, *args)
            assert "3 blocks need" in str(info.value) and "2 fit" in str(info.value), str(info.value)
        node = swarm.start_node(llama_path, "0:2", *args)
        assert (node.info["start"], node.info["end"]) == (0, 2)


def test_four_nodes_with_memory_for_half_the_model_reach_two_replicas_of_every_block(tmp_path, llama_path):
    spec = load_model_spec(llama_path)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    per_block = block_parameter_count(spec) * 4 + 2 * kv_heads * head_dim * 4 * CACHE_TOKENS
    args = ("--max-memory", str(int(4.5 * per_block)), "--cache-tokens", str(CACHE_TOKENS))
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(llama_path, "auto", *args) for _ in range(4)]  # one after another
        spans = [(n.info["start"], n.info["end"]) for n in nodes]
        assert all(end - start == 4 for start, end in spans), spans
        replicas = [sum(start <= b < end for start, end in spans) for b in range(8)]
        assert min(replicas) >= 2, spans
        assert status_cli(swarm.initial_peers)["coverage"] == replicas
