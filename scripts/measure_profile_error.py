"""How far a node's advertised throughput is from its per-block time in service.

A node advertises ``inference_rps`` from its profile (``BlockBackend.profile``: single-token
steps through its span, measured at join or kept from an earlier start), and once it has served
enough single-session steps, from their measured time (``server/profile_cache.ServedSpeed``).
In service its per-block time also carries whatever else the device runs. This script
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
import time

import torch

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.models.tiny import tiny_checkpoint


def measure(
    preset: str, spans: list[str], rounds: int, tokens: int, settle: float = 0.0
) -> list[tuple[str, str, float, float]]:
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
            if settle > 0:
                # Let the nodes re-announce what service measured and the client re-read it.
                time.sleep(settle)
                for _ in range(2):
                    model.generate(ids, max_new_tokens=2, do_sample=True)
                    time.sleep(1.0)
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
    parser.add_argument("--settle", type=float, default=6.0,
                        help="seconds to wait after the rounds before reading the nodes' records "
                             "(they advertise what service measured; 0: read at once)")  # fmt: skip
    args = parser.parse_args()
    rows = measure(args.preset, args.spans, args.rounds, args.tokens, args.settle)
    if not rows:
        raise SystemExit("no node was measured")
    print(
        f"model {args.preset}, nodes {' '.join(args.spans)}, {args.rounds} x {args.tokens} tokens, "
        f"records read {args.settle:.0f} s after"
    )
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
