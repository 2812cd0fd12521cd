"""Node throughput with concurrent sessions: continuous batching on against off, in one run.

For each model — (a) ``wide-llama``, where compute dominates (8 blocks of hidden 1024, ~61 MB
of fp32 weights each, split over 2 nodes) and (b) the small ``tiny-llama`` test model — a local
swarm is started twice, once with ``--batching`` and once with ``--no-batching``. 16 client
processes (each its own process and peer) connect and warm up; then rounds of 1, 4, 8 and 16
concurrent sessions each generate ``--tokens`` tokens greedily after a 6-token prompt (the
1- and 8-session rounds ``--repeats`` times, after an unmeasured warm-up round). Printed per
round: aggregate tokens/s (all sessions' tokens over the round's wall time), per-session
ms/token (median), batched/unbatched ratios, each node's mean batch and busy share, and the
cores used by role (nodes, clients, p2pd daemons); every output is checked against local
generation.

    python scripts/bench_throughput.py [--models wide-llama tiny-llama] [--tokens 48] [--repeats 3]

Machine notes: nodes run with 1 torch thread each (2 nodes, 2 cores); the clients share the
same 2 cores, so per-token client work is part of what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPT = [7, 14, 21, 28, 35, 42]
ROUNDS = (1, 4, 8, 16)


# ---- one client process ------------------------------------------------------------------------
def client_main(model_path: str, peers: list[str]) -> None:
    """Wait for 'go TOKENS SEED' lines on stdin; answer each with one JSON line."""
    import torch

    from swarmnode import DistributedModelForCausalLM

    with DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers) as model:
        model.generate(torch.tensor([PROMPT]), max_new_tokens=2)  # warm-up: routes, streams, pings
        print("ready", flush=True)
        for line in sys.stdin:
            _, tokens, seed = line.split()
            prompt = torch.tensor([[int(seed) % 200 + 3, *PROMPT[1:]]])
            began = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=int(tokens))
            ended = time.perf_counter()
            estimates = getattr(model.remote.router, "estimates", {})
            failures = {peer: e.failures for peer, e in estimates.items() if getattr(e, "failures", 0)}
            print(
                json.dumps({"began": began, "ended": ended, "tokens": out[0].tolist(), "failures": failures}),
                flush=True,
            )


# ---- the driver ----------------------------------------------------------------------------------
class Client:
    """A client process driven over its stdin/stdout."""

    def __init__(self, model_path: str, peers: list[str], log: Path):
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--client", model_path, *peers],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"client failed to start: {line!r}")

    def go(self, tokens: int, seed: int) -> None:
        self.proc.stdin.write(f"go {tokens} {seed}\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("client died: " + "".join(self.log.read_text().splitlines(True)[-15:]))
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def reference_tokens(model_path: str, seeds: list[int], tokens: int) -> dict[int, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    out = {}
    for seed in seeds:
        prompt = torch.tensor([[seed % 200 + 3, *PROMPT[1:]]])
        out[seed] = model.generate(prompt, max_new_tokens=tokens, do_sample=False)[0].tolist()
    return out


def node_counters(nodes) -> dict[str, tuple[float, float, float]]:
    """Per node: (batched decoding steps, scheduler iterations with decodes, iteration seconds)."""
    import urllib.request

    out = {}
    for node in nodes:
        text = urllib.request.urlopen(f"http://{node.info['metrics']}/metrics", timeout=10).read().decode()
        values = {}
        for line in text.splitlines():
            for name in (
                "swarmnode_batch_size_sum",
                "swarmnode_batch_size_count",
                "swarmnode_scheduler_iteration_seconds_sum",
            ):
                if line.startswith(name + " "):
                    values[name] = float(line.split()[-1])
        out[node.info["blocks"]] = tuple(
            values.get(n, 0.0)
            for n in (
                "swarmnode_batch_size_sum",
                "swarmnode_batch_size_count",
                "swarmnode_scheduler_iteration_seconds_sum",
            )
        )
    return out


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this driver's descendants, by role: the nodes' Python processes
    (compute thread, event loop, DHT child), clients' Python processes, and every p2pd daemon."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role = "p2pd" if "p2pd" in cmd else "clients" if "--client" in cmd else "nodes" if " join" in cmd else "other"
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def run_round(clients: list[Client], sessions: int, tokens: int, seed0: int, reference, nodes=()) -> dict:
    before = node_counters(nodes)
    cpu_before = cpu_by_role()
    chosen = clients[:sessions]
    for i, client in enumerate(chosen):
        client.go(tokens, seed0 + i)
    results = [client.result() for client in chosen]
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
    per_token = [1000 * (r["ended"] - r["began"]) / tokens for r in results]
    wrong = sum(r["tokens"] != reference[seed0 + i] for i, r in enumerate(results))
    after = node_counters(nodes)
    cpu_after = cpu_by_role()
    cpu = {role: (cpu_after[role] - cpu_before.get(role, 0.0)) / wall for role in cpu_after}
    nodes_figures = {}
    for span, (steps, iterations, seconds) in after.items():
        d_steps, d_iter, d_sec = steps - before[span][0], iterations - before[span][1], seconds - before[span][2]
        nodes_figures[span] = {"mean_batch": d_steps / max(d_iter, 1), "busy": d_sec / wall}
    return {
        "aggregate": sessions * tokens / wall,
        "ms_per_token": statistics.median(per_token),
        "wrong": wrong,
        "nodes": nodes_figures,
        "cpu": cpu,
    }


def measure(
    model_path: str,
    batching: bool,
    tokens: int,
    repeats: int,
    reference,
    workdir: Path,
    rounds: tuple[int, ...],
    node_flags: tuple[str, ...] = (),
) -> dict:
    from swarmnode.launcher import LocalSwarm

    flag = "--batching" if batching else "--no-batching"
    with LocalSwarm(workdir / ("on" if batching else "off")) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(model_path, span, flag, *node_flags, wait=False) for span in ("0:4", "4:8")]
        for node in nodes:
            swarm.wait_online(node, timeout=300)
        logs = workdir / ("on" if batching else "off")
        clients = [Client(model_path, swarm.initial_peers, logs / f"client-{i}.log") for i in range(max(rounds))]
        try:
            threads = [threading.Thread(target=c.wait_ready) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for client in clients:  # warm-up, not measured: the first round after joining ran slow
                client.go(4, 0)
            for client in clients:
                client.result()
            figures: dict[int, list[dict]] = {}
            for sessions in rounds:
                for _ in range(repeats if sessions in (1, 8) else 1):  # the sizes the targets compare
                    figures.setdefault(sessions, []).append(run_round(clients, sessions, tokens, 0, reference, nodes))
            return figures
        finally:
            for c in clients:
                c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["wide-llama", "tiny-llama"])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=("on", "off"), default=["on", "off"], help="batching")
    parser.add_argument("--rounds", nargs="+", type=int, default=list(ROUNDS), help="concurrent sessions")
    parser.add_argument("--forwarding", action="store_true", help="clients use node-to-node forwarding")
    parser.add_argument("--node-flags", default="", help="more `swarmnode join` flags, e.g. '--no-gather'")
    parser.add_argument("--workdir", help="keep the swarm's and clients' logs here (default: a temporary folder)")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client[0], args.client[1:])
        return

    from swarmnode.models.tiny import tiny_checkpoint

    if args.forwarding:
        os.environ["SWARMNODE_FORWARDING"] = "true"  # the client processes' config
    print(f"forwarding: {'on' if args.forwarding else 'off'}; node flags: {args.node_flags or 'none'}")
    print(f"machine: 2 cores; nodes 1 torch thread each; {max(ROUNDS)} client processes; {args.tokens} new tokens")
    rounds = tuple(args.rounds)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        for preset in args.models:
            path = str(tiny_checkpoint(preset))
            reference = reference_tokens(path, list(range(max(rounds))), args.tokens)
            flags = tuple(args.node_flags.split())
            runs = {mode: measure(path, mode == "on", args.tokens, args.repeats, reference, Path(tmp) / preset, rounds,
                                  flags) for mode in args.modes}  # fmt: skip
            report(preset, runs.get("on", runs.get("off")), runs.get("off", runs.get("on")), rounds)


def report(preset: str, on: dict, off: dict, rounds: tuple[int, ...]) -> None:
    print(f"\n== {preset}: 2 nodes (0:4, 4:8) ==")
    print(f"{'sessions':>8} | {'batching on: tok/s':>18} {'ms/token':>9} | {'off: tok/s':>10} {'ms/token':>9} | on/off")
    for sessions in dict.fromkeys(rounds):  # a size given twice was run twice: print it once
        for i, (a, b) in enumerate(zip(on[sessions], off[sessions], strict=True)):
            label = f"{sessions}" + (f" #{i + 1}" if len(on[sessions]) > 1 else "")
            nodes = "  ".join(
                f"{span}: batch {n['mean_batch']:.1f} busy {n['busy']:.0%}" for span, n in sorted(a["nodes"].items())
            )
            print(
                f"{label:>8} | {a['aggregate']:18.1f} {a['ms_per_token']:9.1f} | {b['aggregate']:10.1f} "
                f"{b['ms_per_token']:9.1f} | {a['aggregate'] / b['aggregate']:5.2f}x   (on: {nodes})"
            )
            cores = "  ".join(f"{role} {used:.2f}" for role, used in sorted(a["cpu"].items()))
            print(f"{'':>8} | cores busy (on): {cores}  (of 2)")
    wrong = sum(r["wrong"] for runs in (*on.values(), *off.values()) for r in runs)
    if 1 in on and 8 in on:
        one = statistics.median(r["aggregate"] for r in on[1])
        one_off = statistics.median(r["aggregate"] for r in off[1])
        eight = statistics.median(r["aggregate"] for r in on[8])
        print(f"  aggregate at 8 sessions / 1 session (batching on, medians): {eight / one:.2f}x (target >= 5x)")
        print(
            f"  1 session, batching on / off (median of runs): {one / one_off:.2f}x (target: no slower, within noise)"
        )
    print(f"  outputs differing from local generation: {wrong}")


if __name__ == "__main__":
    main()
