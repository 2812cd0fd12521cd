"""``swarmnode demo``: a whole swarm on this machine, end to end.

Writes the built-in model (once; cached), starts one bootstrap peer and three nodes
(each its own process) on 127.0.0.1, generates through them, prints the chain, the
per-token latency and whether the output equals local generation, then stops them.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

SPANS = ("0:3", "3:6", "6:8")


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(preset: str = "demo-llama", prompt: str = "A swarm of bees", max_new_tokens: int = 32) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmnode.client.model import DistributedModelForCausalLM
    from swarmnode.launcher import LocalSwarm
    from swarmnode.models.tiny import tiny_checkpoint

    began = time.monotonic()
    path = tiny_checkpoint(preset)
    _say(f"model: {preset} (random weights) at {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with tempfile.TemporaryDirectory(prefix="swarmnode-demo-") as workdir, LocalSwarm(workdir) as swarm:
        maddr = swarm.start_bootstrap()
        _say(f"bootstrap peer: {maddr}")
        nodes = [swarm.start_node(str(path), span, wait=False) for span in SPANS]
        for node in nodes:
            swarm.wait_online(node)
            _say(f"node {node.info['peer_id']} serves blocks {node.info['blocks']} (pid {node.pid})")
        with DistributedModelForCausalLM.from_pretrained(str(path), initial_peers=[maddr]) as model:
            model.generate(ids, max_new_tokens=4)  # warm-up: connections and code paths
            with model.inference_session(max_length=ids.shape[1] + max_new_tokens) as session:
                stamps, tokens = [time.perf_counter()], []
                for token in model.stream_tokens(ids, max_new_tokens=max_new_tokens, session=session):
                    stamps.append(time.perf_counter())
                    tokens.append(int(token[0]))
                chain = session.chain
        gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # after the prompt's step
    reference = AutoModelForCausalLM.from_pretrained(path).generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    local_tokens = reference[0, ids.shape[1] :].tolist()
    same = local_tokens == tokens
    _say("chain: " + " -> ".join(f"{h.peer_id} [{h.start}:{h.end}]" for h in chain))
    _say(f"prompt: {prompt!r}")
    _say(f"output: {tokenizer.decode(tokens)!r}")
    _say(f"tokens: {tokens}")
    if gaps:
        _say(
            f"per-token latency: mean {1000 * statistics.mean(gaps):.2f} ms, "
            f"median {1000 * statistics.median(gaps):.2f} ms over {len(gaps)} tokens"
        )
    _say(f"equals local generation with the same weights: {'YES' if same else 'NO'}")
    _say(f"all processes stopped; demo took {time.monotonic() - began:.1f} s")
    return 0 if same else 1
