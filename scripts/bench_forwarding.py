"""Per-token latency through 3 hops, node-to-node forwarding against relaying through the client.

A local swarm of 3 nodes (tiny-llama: 0:3, 3:5, 5:8) per injected network delay (0, 5 and
20 ms). This kernel has no netem, so the delay is injected by testing aids, per message and
independently (like propagation delay): each node holds every answer to a client and every
push to another node (``--debug-network-delay-ms``), the client holds every message it sends
(``ClientConfig(debug_network_delay_ms=...)``). Relaying costs 2 delays per hop (6 for 3
hops); forwarding costs N+1 = 4. On each swarm, relay and forwarding clients alternate
``--repeats`` times; each run generates ``--tokens`` tokens greedily and the steady-state
per-token latency (first token excluded) is taken; medians are printed with the ratio.

    python scripts/bench_forwarding.py [--delays 0 5 20] [--tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT = torch.tensor([[7, 14, 21, 28, 35, 42]])


def per_token_ms(model, tokens: int) -> tuple[float, list[int]]:
    stamps = []

    class Stamps:
        def put(self, value) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    out = model.generate(PROMPT, max_new_tokens=tokens, streamer=Stamps())
    # stamps[0] is the prompt, stamps[1] the first new token: steady state from there on
    return 1000 * (stamps[-1] - stamps[1]) / (len(stamps) - 2), out[0].tolist()


def measure(path: str, delay_ms: float, tokens: int, repeats: int, workdir: Path) -> dict:
    from swarmnode import DistributedModelForCausalLM
    from swarmnode.launcher import LocalSwarm

    flags = ("--debug-network-delay-ms", str(delay_ms))
    with LocalSwarm(workdir) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(path, span, *flags, wait=False) for span in ("0:3", "3:5", "5:8")]
        for node in nodes:
            swarm.wait_online(node)
        options = dict(initial_peers=swarm.initial_peers, debug_network_delay_ms=delay_ms, routing="shortest")
        results: dict[str, list[float]] = {"relay": [], "forwarding": []}
        outputs = set()
        with (
            DistributedModelForCausalLM.from_pretrained(path, forwarding=False, **options) as relay,
            DistributedModelForCausalLM.from_pretrained(path, forwarding=True, **options) as forwarding,
        ):
            for model in (relay, forwarding):
                per_token_ms(model, 4)  # warm-up: routes, streams, pings
            for _ in range(repeats):
                for name, model in (("relay", relay), ("forwarding", forwarding)):
                    ms, out = per_token_ms(model, tokens)
                    results[name].append(ms)
                    outputs.add(tuple(out))
        return {name: statistics.median(v) for name, v in results.items()} | {"same_output": len(outputs) == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", nargs="+", type=float, default=[0.0, 5.0, 20.0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from swarmnode.models.tiny import tiny_checkpoint

    path = str(tiny_checkpoint("tiny-llama"))
    print(f"3 hops of tiny-llama on 127.0.0.1 (2 cores); {args.tokens} tokens, median of {args.repeats} runs")
    print(
        f"{'delay/message':>13} | {'relay ms/token':>14} | {'forwarding':>10} | {'forwarding vs relay':>19} "
        "| same output"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for delay in args.delays:
            r = measure(path, delay, args.tokens, args.repeats, Path(tmp) / f"d{delay:g}")
            gain = 1 - r["forwarding"] / r["relay"]
            rows.append((delay, gain))
            print(
                f"{delay:10.0f} ms | {r['relay']:14.2f} | {r['forwarding']:10.2f} | {-100 * gain:+18.1f}% "
                f"| {r['same_output']}"
            )
    for delay, gain in rows:
        if delay == 20:
            print(
                f"target: >= 30% lower with forwarding at 20 ms: {100 * gain:.1f}% lower: "
                f"{'MET' if gain >= 0.3 else 'MISSED'}"
            )


if __name__ == "__main__":
    main()
