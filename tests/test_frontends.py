"""The user-facing front ends on the real model: the chat CLI in a pseudo-terminal, and the
OpenAI-compatible API driven by the official ``openai`` client, unchanged."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import pexpect
import pytest
import torch

from tests.conftest import chat_ids

pytestmark = pytest.mark.swarm
QUESTION = "What is the capital of France?"


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def api(smollm2_swarm, smollm2_path):
    proc, base = smollm2_swarm.start_api(smollm2_path)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def openai_client(api):
    import openai

    return openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(openai_client) -> str:
    return openai_client.models.list().data[0].id


def local_text(reference, tokenizer, ids: list[int], max_new_tokens: int, **options) -> tuple[str, int]:
    with torch.inference_mode():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, **options)
    new = out[0, len(ids) :]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def test_chat_completion_equals_local_generation(openai_client, model_id, smollm2_reference, smollm2_tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France? Tell me about the city."}]
    reply = openai_client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=64)
    text, count = local_text(
        smollm2_reference, smollm2_tokenizer, chat_ids(smollm2_tokenizer, messages[0]["content"]), 64
    )
    assert reply.choices[0].message.content == text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == count
    assert reply.usage.prompt_tokens == len(chat_ids(smollm2_tokenizer, messages[0]["content"]))
    assert reply.choices[0].finish_reason == ("length" if count == 64 else "stop")
    assert "Paris" in text


def test_streamed_chat_completion_equals_local_generation(
    openai_client, model_id, smollm2_reference, smollm2_tokenizer
):
    stream = openai_client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    expected, count = local_text(smollm2_reference, smollm2_tokenizer, chat_ids(smollm2_tokenizer, QUESTION), 32)
    assert text == expected == "The capital of France is Paris."
    assert finish == ["stop"]
    assert chunks[-1].usage.completion_tokens == count
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed


def test_completions_plain_and_streamed(openai_client, model_id, smollm2_reference, smollm2_tokenizer):
    prompt = "The three primary colors are"
    ids = smollm2_tokenizer(prompt)["input_ids"]
    expected, count = local_text(smollm2_reference, smollm2_tokenizer, ids, 24)
    reply = openai_client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=24)
    assert reply.choices[0].text == expected
    assert reply.usage.completion_tokens == count == 24 and reply.choices[0].finish_reason == "length"
    streamed = openai_client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=24, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_sampling_with_a_seed_equals_local_sampling(openai_client, model_id, smollm2_reference, smollm2_tokenizer):
    messages = [{"role": "user", "content": "Write a short poem about bees."}]
    args = dict(model=model_id, messages=messages, temperature=0.9, top_p=0.95, seed=7, max_tokens=32)
    first = openai_client.chat.completions.create(**args).choices[0].message.content
    second = openai_client.chat.completions.create(**args).choices[0].message.content
    torch.manual_seed(7)
    expected, _ = local_text(
        smollm2_reference, smollm2_tokenizer, chat_ids(smollm2_tokenizer, messages[0]["content"]), 32,
        do_sample=True, temperature=0.9, top_p=0.95,
    )  # fmt: skip
    assert first == second == expected


def test_stop_sequences_cut_the_text(openai_client, model_id):
    reply = openai_client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32, stop=["Paris"]
    )
    assert reply.choices[0].message.content == "The capital of France is "
    assert reply.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_error_bodies(api, openai_client, model_id):
    import openai

    with pytest.raises(openai.NotFoundError) as error:
        openai_client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert error.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert error.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.completions.create(model=model_id, prompt="hi " * 9000, max_tokens=8)
    assert error.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], n=2)
    status, body = http("POST", f"{api}/v1/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]
    status, body = http("POST", f"{api}/v1/chat/completions", json.dumps({"model": model_id}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = http("GET", f"{api}/v1/nothing-here")
    assert status == 404 and "error" in body
    status, body = http("GET", f"{api}/health")
    assert status == 200 and body["status"] == "ok"


def test_eight_concurrent_streams_all_complete_correctly(openai_client, model_id, smollm2_reference, smollm2_tokenizer):
    countries = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Brazil"]
    results: dict[str, str] = {}

    def ask(country: str) -> None:
        stream = openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": f"What is the capital of {country}?"}],
            temperature=0, max_tokens=24, stream=True,
        )  # fmt: skip
        results[country] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(c,)) for c in countries]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    took = time.monotonic() - began
    for country in countries:
        ids = chat_ids(smollm2_tokenizer, f"What is the capital of {country}?")
        assert results.get(country) == local_text(smollm2_reference, smollm2_tokenizer, ids, 24)[0], country
    print(f"8 concurrent streamed requests in {took:.1f} s")


def test_a_swarm_that_cannot_serve_is_a_503(smollm2_swarm, smollm2_path):
    proc, base = smollm2_swarm.start_api(smollm2_path, "--model-id", "nobody-serves-this", "--wait-for-servers", "1")
    try:
        body = json.dumps({"model": "nobody-serves-this", "messages": [{"role": "user", "content": "hi"}]})
        status, answer = http("POST", f"{base}/v1/chat/completions", body.encode())
        assert status == 503 and answer["error"]["type"] == "service_unavailable"
        status, answer = http("GET", f"{base}/health")
        assert status == 503 and answer["missing_blocks"] == list(range(30))
    finally:
        proc.stop()


def test_chat_cli_in_a_terminal(smollm2_swarm, smollm2_path):
    child = pexpect.spawn(
        sys.executable, ["-m", "swarmnode.cli", "--log-level", "WARNING", "chat", "--initial-peers",
                         *smollm2_swarm.initial_peers, "--model", smollm2_path, "--max-new-tokens", "200"],
        encoding="utf-8", timeout=120, dimensions=(40, 200),
    )  # fmt: skip
    try:
        child.expect_exact(">>> ")
        child.sendline(QUESTION)
        child.expect_exact("The capital of France is Paris.")
        child.expect_exact(">>> ")
        child.sendline("And of Germany?")  # only makes sense with the first turn in the session
        child.expect_exact("The capital of Germany is Berlin.")
        child.expect_exact(">>> ")
        child.sendline("Write a long story about a bee who travels the world.")
        # The terminal echoes the typed line at once: consume it first, or the pattern below
        # matches the echo and Ctrl-C can land while the line is still unread (the tty then
        # discards it) — which happened on a loaded machine.
        child.expect_exact("travels the world.\r\n")
        child.expect(r"\w+ \w+ \w+")  # the answer has begun streaming
        child.sendintr()  # Ctrl-C: stop this answer, keep the chat
        child.expect_exact("[stopped]")
        child.expect_exact(">>> ")
        child.sendline("/reset")
        child.expect_exact("conversation reset")
        child.sendline(QUESTION)
        child.expect_exact("Paris")
        child.expect_exact(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
