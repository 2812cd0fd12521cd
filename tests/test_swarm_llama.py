"""A real swarm on 127.0.0.1: bootstrap + 3 nodes serving [0:3], [3:6], [6:8] of an 8-block
Llama-like checkpoint with grouped-query attention."""

import subprocess
import sys
import time

import pytest
import torch

from swarmnode.config import NodeConfig
from swarmnode.errors import SessionLengthExceeded
from tests.conftest import status_cli

pytestmark = pytest.mark.swarm
PROMPT = torch.tensor([[72, 101, 108, 108, 111, 44, 32, 98, 101, 101, 115]])


@pytest.fixture
def model(llama_client):
    return llama_client


def test_greedy_64_tokens_equal_local_generation(model, llama_reference):
    out = model.generate(PROMPT, max_new_tokens=64)
    expected = llama_reference.generate(PROMPT, max_new_tokens=64, do_sample=False)
    assert out.shape == (1, PROMPT.shape[1] + 64)
    assert torch.equal(out, expected)
    assert len(set(out[0, PROMPT.shape[1] :].tolist())) > 10


def test_sampling_with_a_fixed_seed_equals_local_generation(model, llama_reference):
    options = dict(max_new_tokens=64, do_sample=True, temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1)
    torch.manual_seed(1234)
    out = model.generate(PROMPT, **options)
    torch.manual_seed(1234)
    expected = llama_reference.generate(PROMPT, **options)
    assert torch.equal(out, expected)


def test_session_keeps_caches_and_sends_only_new_tokens(model, llama_reference):
    more = torch.tensor([[33, 63, 10]])
    with model.inference_session(max_length=128) as sess:
        a = model.generate(PROMPT, max_new_tokens=16, session=sess)
        assert [hop.end - hop.start for hop in sess.chain] == [3, 3, 2]
        assert [(h.start, h.end) for h in sess.chain] == [(0, 3), (3, 6), (6, 8)]
        assert sess.position == PROMPT.shape[1] + 15  # the 16th token is not sent yet
        b = model.generate(more, max_new_tokens=16, session=sess)
        # The nodes report the cached prefix that the second call's first step extended:
        # only the pending token and the 3 new ones were sent, not the whole history.
        first_step_of_b = sess.first_prefix_lengths[1]
        assert first_step_of_b == [PROMPT.shape[1] + 15] * 3
        assert sess.first_step_tokens[1] == 1 + more.shape[1]
    expected = llama_reference.generate(torch.cat([a, more], 1), max_new_tokens=16, do_sample=False)
    assert torch.equal(b, expected)


def test_streaming_iterator_and_streamer(model, llama_reference):
    seen = []

    class Recorder:
        def put(self, value):
            seen.append(value.tolist())

        def end(self):
            seen.append("end")

    tokens = [int(t[0]) for t in model.stream_tokens(PROMPT, max_new_tokens=8, streamer=Recorder())]
    expected = llama_reference.generate(PROMPT, max_new_tokens=8, do_sample=False)[0, PROMPT.shape[1] :].tolist()
    assert tokens == expected
    assert seen[0] == PROMPT.tolist() and seen[1:-1] == [[t] for t in expected] and seen[-1] == "end"


def test_a_stream_stopped_early_leaves_its_session_with_the_tokens_taken(model, llama_reference):
    """stream_tokens generates ahead of its caller; a caller that stops after 3 tokens still
    finds exactly those in its session, and continuing gives what one uninterrupted run gives."""
    expected = llama_reference.generate(PROMPT, max_new_tokens=10, do_sample=False)
    with model.inference_session(max_length=64) as session:
        stream = model.stream_tokens(PROMPT, max_new_tokens=10, session=session)
        taken = [int(next(stream)[0]) for _ in range(3)]
        time.sleep(0.5)  # meanwhile the generation runs ahead of us
        stream.close()
        assert session.token_ids.shape[1] == PROMPT.shape[1] + 3
        assert taken == expected[0, PROMPT.shape[1] : PROMPT.shape[1] + 3].tolist()
        out = model.generate(None, max_new_tokens=7, session=session)
    assert torch.equal(out, expected)


def test_stateless_forward_matches_local_logits(model, llama_reference):
    logits = model(PROMPT)
    expected = llama_reference(PROMPT).logits
    assert torch.allclose(logits, expected, atol=1e-4)


def test_hidden_states_may_travel_in_16_bit(llama_swarm, llama_path, llama_reference):
    """wire_dtype="bfloat16": every hop's message carries half the bytes; results stay within
    bfloat16's rounding of the float32 ones, and the caller still gets float32."""
    from tests.conftest import swarm_client

    with swarm_client(llama_swarm, llama_path, wire_dtype="bfloat16") as model:
        logits = model(PROMPT)
        with model.inference_session(max_length=16) as session:
            model.generate(PROMPT, max_new_tokens=4, session=session)
            sent = [inp.hidden.dtype for hop in session._hops for inp in hop.history]
    expected = llama_reference(PROMPT).logits
    assert logits.dtype == torch.float32 and sent and set(sent) == {torch.bfloat16}
    assert (logits - expected).norm() / expected.norm() < 2e-2


def test_session_beyond_max_length_is_a_clear_error(model):
    with model.inference_session(max_length=PROMPT.shape[1] + 4) as sess:
        with pytest.raises(SessionLengthExceeded, match="max_length"):
            model.generate(PROMPT, max_new_tokens=10, session=sess)


def test_a_session_of_the_longest_allowed_length_is_admitted(model, llama_reference):
    # The nodes run with default settings: their KV budget holds one session of the maximum
    # length, and one peer's share is never below one such session.
    with model.inference_session(max_length=NodeConfig.max_session_length) as sess:
        out = model.generate(PROMPT, max_new_tokens=4, session=sess)
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=4, do_sample=False))


def test_status_cli_lists_nodes_and_no_gaps(llama_swarm):
    model = status_cli(llama_swarm.initial_peers)
    assert model["num_blocks"] == 8 and model["gaps"] == [] and model["family"] == "llama"
    assert sorted((n["start"], n["end"], n["state"]) for n in model["nodes"]) == [
        (0, 3, "ONLINE"),
        (3, 6, "ONLINE"),
        (6, 8, "ONLINE"),
    ]
    assert model["coverage"] == [1] * 8


def test_generate_cli_streams_text(llama_swarm, llama_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmnode.cli",
            "generate",
            "--initial-peers",
            *llama_swarm.initial_peers,
            "--model",
            llama_path,
            "--max-new-tokens",
            "12",
            "Hello",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Hello") and len(out.stdout.encode()) > len("Hello")


@pytest.mark.swarm
def test_session_rollback_continues_from_the_kept_prefix(llama_client):
    prompt = torch.tensor([[72, 101, 108, 108, 111, 32, 98, 101, 101]])
    with llama_client.inference_session(max_length=64) as sess:
        first = llama_client.generate(prompt, max_new_tokens=12, session=sess)
        sess.rollback(prompt.shape[1] + 4)  # keep the prompt and the first 4 generated tokens
        again = llama_client.generate(max_new_tokens=8, session=sess)
    # The nodes dropped what followed and recomputed it: the same greedy continuation.
    assert again[0].tolist() == first[0, : prompt.shape[1] + 12].tolist()
    with pytest.raises(ValueError):
        sess.rollback(1000)
