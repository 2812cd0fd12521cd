"""Soak: 16 client processes keep one node of the compute-heavy model busy for 60 s.

One node serves all 8 blocks of ``wide-llama`` (hidden 1024); two watcher nodes (one block
each, made slow with the step-delay testing aid) run SWIM gossip with it; the clients route
with ``shortest`` (advertised speed, no load), so every session runs through the one node.
16 client processes generate back to back (``--tokens`` new tokens per session) for
``--seconds``. The node computes flat out the whole time; what must hold: the watchers never
miss a probe of it (no suspicion, no dead verdict), no client counts it as failed (a refusal at
capacity is load, not failure), and every output equals local generation.

    python scripts/soak_node.py [--seconds 60] [--clients 16] [--tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import Client, reference_tokens  # noqa: E402


def metric(node, name: str) -> float:
    text = urllib.request.urlopen(f"http://{node.info['metrics']}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def peak_resident_bytes(pid: int) -> float:
    """The process's peak resident set (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--workdir")
    args = parser.parse_args()

    from swarmnode.launcher import LocalSwarm
    from swarmnode.models.tiny import tiny_checkpoint

    path = str(tiny_checkpoint("wide-llama"))
    seeds = list(range(4 * args.clients))
    reference = reference_tokens(path, seeds, args.tokens)
    with tempfile.TemporaryDirectory() as scratch, LocalSwarm(Path(args.workdir or scratch)) as swarm:
        swarm.start_bootstrap()
        main_node = swarm.start_node(path, "0:8", wait=False, name="node-main")
        watchers = [swarm.start_node(path, f"{i}:{i + 1}", "--debug-step-delay-ms", "2000", wait=False) for i in (0, 7)]
        for node in (main_node, *watchers):
            swarm.wait_online(node, timeout=300)
        peer = main_node.info["peer_id"]
        os.environ["SWARMNODE_ROUTING"] = "shortest"  # the client processes' config: all load on one node
        clients = [
            Client(path, swarm.initial_peers, Path(swarm.workdir) / f"client-{i}.log") for i in range(args.clients)
        ]
        counts = {"sessions": 0, "wrong": 0, "failures": 0, "died": 0}
        lock = threading.Lock()
        try:
            for c in clients:
                c.wait_ready()
            probes_before = sum(metric(w, "swarmnode_gossip_probe_failures_total") for w in watchers)
            deadline = time.monotonic() + args.seconds

            def drive(index: int, client: Client) -> None:
                round_ = 0
                while time.monotonic() < deadline:
                    seed = seeds[(index + round_ * args.clients) % len(seeds)]
                    client.go(args.tokens, seed)
                    try:
                        result = client.result()
                    except RuntimeError:
                        with lock:
                            counts["died"] += 1
                        return
                    with lock:
                        counts["sessions"] += 1
                        counts["wrong"] += result["tokens"] != reference[seed]
                        counts["failures"] = max(counts["failures"], result["failures"].get(peer, 0))
                    round_ += 1

            began = time.monotonic()
            threads = [threading.Thread(target=drive, args=(i, c)) for i, c in enumerate(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - began
            probes = sum(metric(w, "swarmnode_gossip_probe_failures_total") for w in watchers) - probes_before
            suspicions = sum(f"suspecting {peer}" in w.log_tail(10_000) for w in watchers)
            verdicts = sum(f"declaring {peer} dead" in w.log_tail(10_000) for w in watchers)
            refused = metric(main_node, 'swarmnode_sessions_refused_total{reason="at_capacity"}')
            tokens = metric(main_node, 'swarmnode_tokens_processed_total{kind="decode"}')
            batch_sum, batch_count = (metric(main_node, f"swarmnode_batch_size_{s}") for s in ("sum", "count"))
            weights, budget = (
                metric(main_node, "swarmnode_weights_bytes"),
                metric(main_node, "swarmnode_kv_cache_budget_bytes"),
            )
            peak = peak_resident_bytes(main_node.pid)
        finally:
            for c in clients:
                c.close()
    print(f"soak: {args.clients} clients, {wall:.0f} s, one node serving 0:8 of wide-llama (hidden 1024)")
    print(f"  sessions completed {counts['sessions']}, outputs differing from local generation {counts['wrong']}")
    print(
        f"  decoding tokens through the node {tokens:.0f} ({tokens / wall:.1f}/s), "
        f"mean batch {batch_sum / max(batch_count, 1):.1f}"
    )
    print(
        f"  watchers' failed probes of any member {probes:.0f}; "
        f"suspicions of the node {suspicions}; dead verdicts {verdicts}"
    )
    print(
        f"  refusals at capacity {refused:.0f}; "
        f"times a client counted the node as failed (max per client) {counts['failures']}"
    )
    print(f"  client processes that died {counts['died']}")
    mib = 1 << 20
    print(
        f"  node memory: peak resident {peak / mib:.0f} MiB; weights {weights / mib:.0f} MiB + KV budget "
        f"{budget / mib:.0f} MiB = {(weights + budget) / mib:.0f} MiB; overhead above the weights "
        f"{(peak - weights) / mib:.0f} MiB"
    )
    ok = not (counts["wrong"] or probes or suspicions or verdicts or counts["failures"] or counts["died"])
    print("SOAK PASSED" if ok else "SOAK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
