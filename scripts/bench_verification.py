"""What spot-checks cost: per-token latency and session time with verify_fraction 0, 0.1, 0.25
and 1, on the same local swarm in the same run (two replicas of each span, so every check
finds a replica), how many checks ran, and aggregate throughput with several sessions at
once (threads of one client). Not a test: these machines are noisy.

    python scripts/bench_verification.py [--tokens 32] [--sessions 3] [--concurrent 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

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


def throughput(model, ids, tokens: int, concurrent: int) -> float:
    """Tokens per second in all, ``concurrent`` sessions generating at once."""

    def one(i: int) -> int:
        with model.inference_session(max_length=ids.shape[1] + tokens) as session:
            return model.generate(ids + i, max_new_tokens=tokens, session=session).shape[1] - ids.shape[1]

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        produced = sum(pool.map(one, range(concurrent)))
    return produced / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=4, help="sessions at once for the throughput column")
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
                gap, wall, checks = run(model, ids, args.tokens, args.sessions)
                rate = throughput(model, ids, args.tokens, args.concurrent)
                rows.append((fraction, gap, wall, checks, rate))
    base_gap, base_wall, base_rate = rows[0][1], rows[0][2], rows[0][4]
    print(f"tiny model, 2 nodes per chain, 2 replicas per span, {args.sessions} sessions × {args.tokens} tokens; "
          f"throughput: {args.concurrent} sessions at once")  # fmt: skip
    print(
        "verify_fraction  per-token ms (median)  ×base   session s (median)  ×base   "
        "tokens/s at once  ×base   checks (checked/disagreed/skipped)"
    )
    for fraction, gap, wall, checks, rate in rows:
        print(f"{fraction:>15.2f}  {gap:>21.2f}  {gap / base_gap:>5.2f}  {wall:>18.3f}  {wall / base_wall:>5.2f}   "
              f"{rate:>16.1f}  {rate / base_rate:>5.2f}   "
              f"{checks['checked']}/{checks['disagreed']}/{checks['skipped']}")  # fmt: skip


if __name__ == "__main__":
    main()
