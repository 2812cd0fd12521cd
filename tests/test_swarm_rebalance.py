"""Rebalancing on churn with real processes: the only replica of some blocks leaves, a
--blocks auto node moves its span over the gap, and the session in flight finishes with the
same text (it waits out the gap, then moves; nothing fails)."""

import signal
import time

import pytest
import torch

from swarmnode import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.models import block_parameter_count, load_model_spec
from tests.conftest import status_cli
from tests.test_failover import NEW_TOKENS, PROMPT, Stamper

pytestmark = pytest.mark.swarm
CACHE_TOKENS = 256


@pytest.mark.parametrize(
    "sig, placed", [(signal.SIGTERM, "auto"), (signal.SIGKILL, "4")], ids=["leaves-auto", "crashes-count"]
)
def test_the_only_replica_leaves_and_an_auto_node_covers_the_gap(tmp_path, llama_path, sig, placed):
    """``placed``: the moving node's --blocks, auto or a count (both are placed by the swarm)."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(llama_path).generate(
        PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False
    )
    spec = load_model_spec(llama_path)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    per_block = block_parameter_count(spec) * 4 + 2 * kv_heads * head_dim * 4 * CACHE_TOKENS
    slow = ("--debug-step-delay-ms", "40")  # so the session is still running when the node goes
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        fixed = {span: swarm.start_node(llama_path, span, *slow) for span in ("0:4", "4:8")}
        auto = swarm.start_node(
            llama_path, placed, *slow, "--max-memory", str(int(4.5 * per_block)), "--cache-tokens",
            str(CACHE_TOKENS), "--rebalance-period", "600",  # only the membership change may trigger it
        )  # fmt: skip
        auto_span = f"{auto.info['start']}:{auto.info['end']}"
        victim = fixed["4:8" if auto_span == "0:4" else "0:4"]  # the only replica of its blocks
        events = {}

        def hit():
            events["hit"] = time.time()
            victim.signal(sig)

        with DistributedModelForCausalLM.from_pretrained(
            llama_path, initial_peers=swarm.initial_peers, wait_for_servers=60
        ) as model:
            with model.inference_session(max_length=PROMPT.shape[1] + NEW_TOKENS) as session:
                stamper = Stamper(8, hit)
                out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, session=session, streamer=stamper)
        moved = auto.wait_line("MOVED", timeout=5)
        fields = dict(part.split("=", 1) for part in moved.split()[1:])
        assert fields["from"] == auto_span and fields["blocks"] == f"{victim.info['start']}:{victim.info['end']}"
        assert torch.equal(out, reference)  # the session in flight did not fail, nor change its text
        assert session.failovers and all(e.replacement for e in session.failovers)
        stall = stamper.longest_gap()
        decided, done = (_logged_at(auto.log_path, text) - events["hit"] for text in ("moving", "moved"))
        print(
            f"\ntimeline ({signal.Signals(sig).name}, seconds after the only replica of {victim.info['blocks']} "
            f"was hit, 8 tokens in): the placed node ({placed}) decided to move {fields['from']} -> "
            f"{fields['blocks']} at "
            f"+{decided:.2f}, served the new span and freed the old at +{done:.2f}; the session's failovers "
            f"{[(e.reason.split(':')[0], round(e.seconds, 2)) for e in session.failovers]}; longest stall between "
            f"tokens {stall:.2f} s; {NEW_TOKENS} tokens equal to local generation"
        )
        assert stall < 20, stall  # noticed (announce period 2 s / gossip), decided, loaded, replayed
        report = status_cli(swarm.initial_peers)
        assert report["gaps"] == [], report
        survivor = fixed[auto_span]  # an explicit span never moves (it could have: its half had two nodes)
        assert not [line for line in list(survivor.lines.queue) if line and line.startswith("MOVED")]
        assert "rebalancing" not in survivor.log_path.read_text()


def _logged_at(log_path, text: str) -> float:
    """When the node logged ``rebalancing: <text>`` (its log's wall-clock timestamp)."""
    import datetime

    for line in log_path.read_text().splitlines():
        if f"rebalancing: {text}" in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no 'rebalancing: {text}' line in {log_path}")
