"""Node-to-node forwarding on real processes: hops send their outputs straight to the next hop,
the text stays what local generation gives, and a middle hop that dies or hangs costs a stall,
never the text."""

import signal

import pytest
import torch

from tests.conftest import swarm_client
from tests.test_failover import NEW_TOKENS, PROMPT, generate_with_fault, resume_all, start

pytestmark = pytest.mark.swarm


def test_forwarding_gives_the_same_tokens_and_skips_the_client(llama_swarm, llama_path, llama_reference):
    expected = llama_reference.generate(PROMPT, max_new_tokens=16, do_sample=False)
    with swarm_client(llama_swarm, llama_path, forwarding=True) as model:
        with model.inference_session(max_length=64) as session:
            out = model.generate(PROMPT, max_new_tokens=16, session=session)
            more = model.generate(max_new_tokens=4, session=session)  # the session goes on
            hops = len(session.chain)
            # every decoding step after the prompt's: each hop but the last pushed to the next
            assert session.forwarded_hops == (16 - 1 + 4) * (hops - 1)
            assert not session.failovers
    assert hops == 3 and torch.equal(out, expected)
    assert torch.equal(more, llama_reference.generate(PROMPT, max_new_tokens=20, do_sample=False))


@pytest.mark.parametrize("sig, max_gap", [(signal.SIGKILL, 3.0), (signal.SIGSTOP, 5.0)])
def test_a_middle_hop_that_dies_or_hangs_keeps_the_text_with_forwarding(tmp_path, llama_path, sig, max_gap):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(llama_path).generate(
        PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False
    )
    with start(tmp_path, llama_path, ("0:3", "3:6", "3:6", "6:8")) as swarm:
        try:
            out, stamper, session, victim = generate_with_fault(
                swarm, llama_path, lambda p: p.signal(sig), victim_hop=1, forwarding=True
            )
        finally:
            resume_all(swarm)
    assert torch.equal(out, reference)
    assert stamper.longest_gap() <= max_gap, stamper.longest_gap()
    assert [e.failed.peer_id for e in session.failovers] == [victim.info["peer_id"]]
    assert session.forwarded_hops > (NEW_TOKENS - 3) * 2  # forwarding went on after the failover
