"""How far a node's advertised throughput is from its per-block time in service.

A node advertises ``inference_rps`` from a one-off microbenchmark when it starts
(``Backend.profile``: one block, one token, an idle device). In service its per-block
time also carries the step's fixed costs and whatever else the device runs. This script
starts a real local swarm (bootstrap + nodes, each its own process, 127.0.0.1), generates
through it, and prints per node the advertised time per block, the time per block the
client measured from the nodes' own reported compute times (decoding steps only), their
ratio, and the spread of the log ratios: the ``--profile-error`` that
``scripts/simulate_routing.py`` should assume.

    python scripts/measure_profile_error.py [--preset demo-llama] [--spans 0:3 3:6 6:8] [--rounds 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile

import torch

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.models.tiny import tiny_checkpoint


def measure(preset: str, spans: list[str], rounds: int, tokens: int) -> list[tuple[str, str, float, float]]:
    """Per node: (peer id, span, advertised s/block, measured s/block)."""
    path = tiny_checkpoint(preset)
    ids = torch.randint(0, 256, (1, 16))
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        swarm.start_bootstrap()
        for node in [swarm.start_node(str(path), span, wait=False) for span in spans]:
            swarm.wait_online(node)
        with DistributedModelForCausalLM.from_pretrained(
            str(path), initial_peers=swarm.initial_peers, routing="aco"
        ) as model:
            for _ in range(rounds):
                model.generate(ids, max_new_tokens=tokens, do_sample=True)
            router, snapshot = model.remote.router, model.remote.last_snapshot
            rows = []
            for peer, record in sorted(snapshot.nodes.items(), key=lambda item: item[1].start):
                estimate = router.estimates.get(peer)
                if estimate is None or estimate.per_block_s is None or record.inference_rps <= 0:
                    continue
                rows.append((peer, f"{record.start}:{record.end}", 1 / record.inference_rps, estimate.per_block_s))
            return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo-llama")
    parser.add_argument("--spans", nargs="+", default=["0:3", "3:6", "6:8"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    rows = measure(args.preset, args.spans, args.rounds, args.tokens)
    if not rows:
        raise SystemExit("no node was measured")
    print(f"model {args.preset}, nodes {' '.join(args.spans)}, {args.rounds} x {args.tokens} tokens")
    logs = []
    for peer, span, advertised, measured in rows:
        logs.append(math.log(measured / advertised))
        print(
            f"node {peer[-8:]} [{span}]  advertised {1000 * advertised:.3f} ms/block  "
            f"in service {1000 * measured:.3f} ms/block  ratio {measured / advertised:.2f}"
        )
    spread = statistics.pstdev(logs) if len(logs) > 1 else 0.0
    print(f"log ratio: mean {statistics.fmean(logs):+.2f}, spread (sigma) {spread:.2f}")


if __name__ == "__main__":
    main()
