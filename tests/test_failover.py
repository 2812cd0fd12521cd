"""Fault tolerance with real processes: a node that crashes, hangs or leaves mid-generation
costs a short stall, never the text."""

import os
import signal
import time

import pytest
import torch

from swarmnode import DistributedModelForCausalLM
from swarmnode.errors import NoServersForBlocks
from swarmnode.launcher import LocalSwarm

pytestmark = pytest.mark.swarm
PROMPT = torch.tensor([[7, 14, 21, 28, 35, 42]])
NEW_TOKENS = 64


class Stamper:
    """A streamer that records token arrival times and runs ``action`` after ``after`` new tokens."""

    def __init__(self, after: int, action):
        self.after, self.action, self.times, self.count = after, action, [], -1

    def put(self, value) -> None:
        self.times.append(time.monotonic())
        self.count += 1
        if self.count == self.after:
            self.action()

    def end(self) -> None:
        pass

    def longest_gap(self) -> float:
        gaps = [b - a for a, b in zip(self.times[1:], self.times[2:], strict=False)]
        return max(gaps)


@pytest.fixture(scope="module")
def reference(llama_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_path)
    return model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)


def start(tmp_path, llama_path, spans, **node_args):
    swarm = LocalSwarm(tmp_path)
    swarm.start_bootstrap()
    nodes = [swarm.start_node(llama_path, span, wait=False) for span in spans]
    for node in nodes:
        swarm.wait_online(node)
    return swarm


def process_of(swarm, peer_id):
    return next(p for p in swarm.processes if p.info.get("peer_id") == peer_id)


def resume_all(swarm) -> None:
    """SIGCONT every process still alive (a SIGSTOPped node must not outlive its test)."""
    for p in swarm.processes:
        if p.alive():
            os.kill(p.pid, signal.SIGCONT)


def generate_with_fault(swarm, llama_path, fault, after=10, victim_hop=-1, **client_options):
    """Generate NEW_TOKENS; after ``after`` of them, ``fault`` hits the node of hop ``victim_hop``."""
    with DistributedModelForCausalLM.from_pretrained(
        llama_path, initial_peers=swarm.initial_peers, **client_options
    ) as model:
        with model.inference_session(max_length=PROMPT.shape[1] + NEW_TOKENS) as session:
            victim = {}

            def act():
                victim["proc"] = process_of(swarm, session.chain[victim_hop].peer_id)
                fault(victim["proc"])

            stamper = Stamper(after, act)
            out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, session=session, streamer=stamper)
            return out, stamper, session, victim["proc"]


@pytest.mark.parametrize("forwarding", [False, True], ids=["relay", "forwarding"])
@pytest.mark.parametrize("sig, max_gap", [(signal.SIGKILL, 3.0), (signal.SIGSTOP, 5.0)])
def test_crash_or_hang_mid_generation_keeps_the_text(tmp_path, llama_path, reference, sig, max_gap, forwarding):
    with start(tmp_path, llama_path, ("0:4", "4:8", "4:8")) as swarm:
        try:
            out, stamper, session, victim = generate_with_fault(
                swarm, llama_path, lambda p: p.signal(sig), forwarding=forwarding
            )
        finally:
            resume_all(swarm)
        assert torch.equal(out, reference)
        assert stamper.longest_gap() <= max_gap, stamper.longest_gap()
        assert len(session.failovers) == 1
        event = session.failovers[0]
        assert event.failed.peer_id == victim.info["peer_id"]
        assert event.replacement[0].peer_id != victim.info["peer_id"]
        assert event.replayed_tokens == PROMPT.shape[1] + 9  # the 10th new token was not sent yet


@pytest.mark.parametrize("forwarding", [False, True], ids=["relay", "forwarding"])
def test_graceful_departure_moves_the_session_without_error(tmp_path, llama_path, reference, forwarding):
    with start(tmp_path, llama_path, ("0:4", "4:8", "4:8")) as swarm:
        out, stamper, session, victim = generate_with_fault(
            swarm, llama_path, lambda p: p.signal(signal.SIGTERM), forwarding=forwarding
        )
        assert torch.equal(out, reference)
        assert [e.reason for e in session.failovers] == ["draining"]
        assert victim.popen.wait(timeout=30) == 0  # it left cleanly once the session moved


def test_no_replica_raises_no_servers_within_the_bounded_wait(tmp_path, llama_path):
    with start(tmp_path, llama_path, ("0:4", "4:8")) as swarm:
        began = {}

        def kill(proc):
            began["t"] = time.monotonic()
            proc.signal(signal.SIGKILL)

        with pytest.raises(NoServersForBlocks) as info:
            generate_with_fault(swarm, llama_path, kill, wait_for_servers=3)
        assert info.value.blocks == [4, 5, 6, 7]
        assert time.monotonic() - began["t"] < 3 + 10


def test_node_restarted_with_the_same_identity_is_used_again(tmp_path, llama_path, reference):
    identity = str(tmp_path / "node.id")
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        swarm.start_node(llama_path, "0:4")
        first = swarm.start_node(llama_path, "4:8", "--identity", identity)
        peer_id = first.info["peer_id"]
        first.signal(signal.SIGKILL)
        first.popen.wait(10)
        again = swarm.start_node(llama_path, "4:8", "--identity", identity)
        assert again.info["peer_id"] == peer_id
        with DistributedModelForCausalLM.from_pretrained(llama_path, initial_peers=swarm.initial_peers) as model:
            with model.inference_session(max_length=PROMPT.shape[1] + NEW_TOKENS) as session:
                out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, session=session)
                assert session.chain[-1].peer_id == peer_id
        assert torch.equal(out, reference)


def test_replacement_on_a_node_already_in_the_chain(tmp_path, llama_path, reference):
    """B [4:8] dies; the only replacement is A, which already serves [0:4] of the same session."""
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        a = swarm.start_node(llama_path, "0:8", "--throughput", "100", wait=False)
        b = swarm.start_node(llama_path, "4:8", "--throughput", "100000", wait=False)
        for node in (a, b):
            swarm.wait_online(node)
        out, stamper, session, victim = generate_with_fault(
            swarm, llama_path, lambda p: p.signal(signal.SIGKILL), routing="shortest"
        )
        assert victim is b
        assert torch.equal(out, reference)
        assert [(h.peer_id, h.start, h.end) for h in session.chain] == [
            (a.info["peer_id"], 0, 4),
            (a.info["peer_id"], 4, 8),
        ]
