"""The real pretrained model end to end: SmolLM2-135M-Instruct from its packaged GGUF,
converted once, served by 3 nodes (30 blocks), compared with local transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from swarmnode.frontends.chat import Conversation, SessionRenewed, Turn
from tests.conftest import chat_ids

pytestmark = pytest.mark.swarm
LONG_QUESTION = "What is the capital of France? Tell me about the city."


def test_gguf_conversion_gives_the_logits_of_transformers_reading_the_gguf(smollm2_path, smollm2_reference):
    from transformers import AutoModelForCausalLM

    from swarmnode.models.gguf import SMOLLM2

    gguf = SMOLLM2.gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 7042, 30, 2, 198]])
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, smollm2_reference(ids).logits)
    config = (smollm2_reference.config.num_hidden_layers, smollm2_reference.config.hidden_size)
    assert config == (30, 576)


def test_chat_answer_through_the_swarm_equals_local_generation(smollm2_client, smollm2_reference, smollm2_tokenizer):
    ids = torch.tensor([chat_ids(smollm2_tokenizer, LONG_QUESTION)])
    ours = smollm2_client.generate(ids, max_new_tokens=80)
    with torch.inference_mode():
        local = smollm2_reference.generate(ids, max_new_tokens=80)
    assert ours[0].tolist() == local[0].tolist()
    new = ours[0, ids.shape[1] :]
    assert len(new) >= 48
    assert "Paris" in smollm2_tokenizer.decode(new, skip_special_tokens=True)


def test_conversation_keeps_one_session_and_sends_only_new_tokens(smollm2_client, smollm2_reference, smollm2_tokenizer):
    chat = Conversation(smollm2_client, smollm2_tokenizer, max_length=512, max_new_tokens=48)
    try:
        first = [item for item in chat.reply("What is the capital of France?")]
        second = [item for item in chat.reply("And of Germany?")]
        assert "Paris" in "".join(i for i in first if isinstance(i, str))
        answer = "".join(i for i in second if isinstance(i, str))
        assert "Berlin" in answer
        assert second[-1].finish == "stop"
        # The second turn's first step carried only what the first turn had not sent.
        whole = chat_ids(smollm2_tokenizer, "What is the capital of France?", first[-1].text, "And of Germany?")
        assert chat.session.first_step_tokens[1] < len(whole) // 2
        # ... and the answer is what local generation gives for the whole conversation.
        with torch.inference_mode():
            local = smollm2_reference.generate(torch.tensor([whole]), max_new_tokens=48)
        assert answer == smollm2_tokenizer.decode(local[0, len(whole) :], skip_special_tokens=True)
    finally:
        chat.close()


def test_conversation_renews_a_full_session_with_a_clear_notice(smollm2_client, smollm2_tokenizer):
    chat = Conversation(smollm2_client, smollm2_tokenizer, max_length=96, max_new_tokens=24)
    try:
        turns = [list(chat.reply(q)) for q in ("What is the capital of France?", "And of Germany?", "And of Italy?")]
        notices = [i for turn in turns for i in turn if isinstance(i, SessionRenewed)]
        assert notices and notices[0].max_length == 96
        assert all(isinstance(turn[-1], Turn) and turn[-1].text for turn in turns)
    finally:
        chat.close()


def test_the_builtin_name_and_the_gguf_file_are_the_same_swarm_model(smollm2_swarm, smollm2_path, smollm2_client):
    from swarmnode.models import load_model_spec
    from swarmnode.models.gguf import SMOLLM2
    from swarmnode.records import model_id_from_name

    by_name, by_file = load_model_spec("smollm2"), load_model_spec(str(SMOLLM2.gguf_path()))
    assert by_name.path == by_file.path == smollm2_path  # one conversion, found in the cache
    assert model_id_from_name(by_name.name) == model_id_from_name(by_file.name) == smollm2_client.remote.model_id
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode.cli", "--log-level", "WARNING", "generate", "The capital of France is",
         "--model", "smollm2", "--max-new-tokens", "8", "--temperature", "0", "--initial-peers",
         *smollm2_swarm.initial_peers],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is") and "Paris" in out.stdout


def test_generate_cli_without_a_tokenizer_is_a_clear_error(tmp_path, smollm2_path):
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(smollm2_path, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode.cli", "generate", "hi", "--model", str(folder), "--initial-peers",
         "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWJ6g7FAXf9jSy6HwXVBmw2SnP3AL58zd7EE5fNzDqKJA5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "has no usable tokenizer" in out.stderr and "Traceback" not in out.stderr


def test_chat_survives_a_swarm_failure_and_forgets_the_unanswered_question(smollm2_tokenizer):
    import io
    from types import SimpleNamespace

    from swarmnode.errors import NoServersForBlocks
    from swarmnode.frontends.chat import run_chat

    class FailingModel:  # a swarm whose blocks are all gone: every answer fails before its first token
        remote = SimpleNamespace(model_id="gone")
        generation_config = SimpleNamespace(eos_token_id=2)
        sessions = 0

        def inference_session(self, max_length):
            FailingModel.sessions += 1
            return SimpleNamespace(token_ids=None, position=0, close=lambda: None)

        def stream_tokens(self, *args, **kwargs):
            raise NoServersForBlocks([0, 1], "gone", 1.0)
            yield  # a generator, like the real one: the error comes with the first token

    chat = Conversation(FailingModel(), smollm2_tokenizer)
    lines, out = iter(["What is the capital of France?", "/quit"]), io.StringIO()
    assert run_chat(chat, out=out, read=lambda prompt: next(lines)) == 0
    assert "the swarm could not answer" in out.getvalue() and "no live node" in out.getvalue()
    assert chat.messages == [] and FailingModel.sessions == 2  # question forgotten, a fresh session for the next
