"""What spot-checks cost: per-token latency and session time with verify_fraction 0, 0.1, 0.25
and 1, on the same local swarm in the same run (two replicas of each span, so every check
finds a replica), plus how many checks ran. Not a test: these machines are noisy.

    python scripts/bench_verification.py [--tokens 32] [--sessions 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.client.trace import ArrivalStamps
from swarmnode.launcher import LocalSwarm
from swarmnode.models.gguf import resolve_model

FRACTIONS = (0.0, 0.1, 0.25, 1.0)


def run(model, ids, tokens: int, sessions: int) -> tuple[float, float, dict]:
    gaps, walls, checks = [], [], {"checked": 0, "disagreed": 0, "skipped": 0}
    for _ in range(sessions):
        stamps = ArrivalStamps()
        began = time.perf_counter()
        with model.inference_session(max_length=ids.shape[1] + tokens) as session:
            model.generate(ids, max_new_tokens=tokens, session=session, streamer=stamps)
            for name, count in session.verification.items():
                checks[name] += count
        walls.append(time.perf_counter() - began)
        gaps += [1000 * gap for gap in stamps.token_gaps()]
    return statistics.median(gaps), statistics.median(walls), checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=3)
    args = parser.parse_args()
    path = str(resolve_model("tiny").path)
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(path, span, wait=False) for span in ("0:4", "4:8", "0:4", "4:8")]
        for node in nodes:
            swarm.wait_online(node)
        ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
        rows = []
        for fraction in FRACTIONS:
            with DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers,
                                                             verify_fraction=fraction) as model:  # fmt: skip
                model.generate(ids, max_new_tokens=4)  # warm-up
                rows.append((fraction, *run(model, ids, args.tokens, args.sessions)))
    base_gap, base_wall = rows[0][1], rows[0][2]
    print(f"tiny model, 2 nodes per chain, 2 replicas per span, {args.sessions} sessions × {args.tokens} tokens")
    print(
        "verify_fraction  per-token ms (median)  ×base   session s (median)  ×base   checks (checked/disagreed/skipped)"
    )
    for fraction, gap, wall, checks in rows:
        print(f"{fraction:>15.2f}  {gap:>21.2f}  {gap / base_gap:>5.2f}  {wall:>18.3f}  {wall / base_wall:>5.2f}   "
              f"{checks['checked']}/{checks['disagreed']}/{checks['skipped']}")  # fmt: skip


if __name__ == "__main__":
    main()
