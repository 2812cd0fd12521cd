"""Per-token latency through 2 and 3 hops against local transformers generation.

Starts real local swarms (bootstrap + nodes, each its own process) on 127.0.0.1 and
measures, in the same run, local `transformers` generation of the same model. Prints
both, the ratio and the overhead per hop. Not a test: these machines are noisy.

    python scripts/bench_latency.py [--preset tiny-llama] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from transformers import AutoModelForCausalLM

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.client.trace import ArrivalStamps
from swarmnode.launcher import LocalSwarm
from swarmnode.models.tiny import tiny_checkpoint

LAYOUTS = {2: ("0:4", "4:8"), 3: ("0:3", "3:6", "6:8")}


def per_token_ms(stamps: list[float]) -> float:
    """Median gap between consecutive new tokens (the prompt's step excluded)."""
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return 1000 * statistics.median(gaps)


def local_latency(path, ids, tokens: int, repeats: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(path)
    results = []
    for _ in range(repeats):
        stamps = ArrivalStamps()
        model.generate(ids, max_new_tokens=tokens, do_sample=False, streamer=stamps)
        results.append(per_token_ms(stamps.times))
    return min(results)


def swarm_latency(path, ids, hops: int, tokens: int, repeats: int) -> tuple[float, list[int]]:
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        maddr = swarm.start_bootstrap()
        for node in [swarm.start_node(str(path), span, wait=False) for span in LAYOUTS[hops]]:
            swarm.wait_online(node)
        with DistributedModelForCausalLM.from_pretrained(str(path), initial_peers=[maddr]) as model:
            model.generate(ids, max_new_tokens=4)  # warm-up
            results, out = [], None
            for _ in range(repeats):
                stamps = ArrivalStamps()
                out = model.generate(ids, max_new_tokens=tokens, streamer=stamps)
                results.append(per_token_ms(stamps.times))
            return min(results), out[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = tiny_checkpoint(args.preset)
    ids = torch.randint(0, 256, (1, 16))
    local_ms = local_latency(path, ids, args.tokens, args.repeats)
    print(f"model {args.preset}, {args.tokens} new tokens, best of {args.repeats} runs (median gap per run)")
    print(f"local transformers generation: {local_ms:.2f} ms/token")
    for hops in (2, 3):
        ms, _ = swarm_latency(path, ids, hops, args.tokens, args.repeats)
        overhead = (ms - local_ms) / hops
        print(
            f"swarm, {hops} hops: {ms:.2f} ms/token  ratio {ms / local_ms:.2f}x local  "
            f"overhead {overhead:.2f} ms/hop (target <= 1.00)"
        )


if __name__ == "__main__":
    main()
