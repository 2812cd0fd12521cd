"""Per-token latency seen through the OpenAI-compatible API vs the Python API, same swarm, same run.

Starts a local swarm of the built-in model (bootstrap + 3 nodes on 127.0.0.1), then for
each repeat measures a greedy answer's steady-state per-token latency (first token to last,
divided by the tokens in between) through ``DistributedModelForCausalLM.stream_tokens`` and
through ``swarmnode api`` with the official ``openai`` client streaming a chat completion.
Prints both medians and their ratio.

    python scripts/bench_api_latency.py [--model smollm2] [--tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarmnode.client.model import DistributedModelForCausalLM  # noqa: E402
from swarmnode.client.text import chat_prompt_ids  # noqa: E402
from swarmnode.demo import even_spans  # noqa: E402
from swarmnode.launcher import LocalSwarm  # noqa: E402
from swarmnode.models import load_model_spec, load_tokenizer  # noqa: E402

QUESTION = "Tell me about the history of Paris in detail."


def python_api(client, ids: list[int], tokens: int) -> float:
    stamps = []
    for _ in client.stream_tokens(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens):
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def openai_api(openai_client, model_id: str, tokens: int) -> float:
    stream = openai_client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=tokens,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    stamps, generated = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            generated = chunk.usage.completion_tokens
    # Chunks follow tokens (a token whose text is held back, e.g. half a character, shows with the next).
    return (stamps[-1] - stamps[0]) / max(1, min(generated or len(stamps), len(stamps)) - 1)


def main() -> int:
    import openai

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = load_model_spec(args.model)
    tokenizer = load_tokenizer(spec)
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": QUESTION}])
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        swarm.start_bootstrap()
        for node in [swarm.start_node(spec.path, span, wait=False) for span in even_spans(spec.num_blocks)]:
            swarm.wait_online(node)
        api_proc, base = swarm.start_api(spec.path)
        try:
            client_api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
            model_id = client_api.models.list().data[0].id
            with DistributedModelForCausalLM.from_pretrained(spec.path, initial_peers=swarm.initial_peers) as client:
                python_api(client, ids, 4)  # warm-up both paths
                openai_api(client_api, model_id, 4)
                ours, theirs = [], []
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    ours.append(python_api(client, ids, args.tokens))
                    theirs.append(openai_api(client_api, model_id, args.tokens))
        finally:
            api_proc.stop()
    py_ms, api_ms = 1000 * statistics.median(ours), 1000 * statistics.median(theirs)
    print(f"model {spec.name}, 3 nodes, {args.tokens} tokens, {args.repeats} interleaved repeats (median)")
    print(f"python API (stream_tokens):            {py_ms:7.2f} ms/token  runs {[round(1000 * x, 1) for x in ours]}")
    print(f"openai client -> swarmnode api (SSE):  {api_ms:7.2f} ms/token  runs {[round(1000 * x, 1) for x in theirs]}")
    print(f"ratio api / python: {api_ms / py_ms:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
