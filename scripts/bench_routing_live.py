"""Routing on a live local swarm: ``aco`` against ``shortest``, ``shortest_load`` and ``random``.

A real swarm of 10 nodes over a 12-block random llama checkpoint, heterogeneous on purpose:
spans replicated 1-4 times, nodes made slow with the step-delay testing aid (a sleep per
step: it costs no CPU, so the 2 shared cores are not what is measured) and made far with the
network-delay testing aid (every answer held back, pings included). Several client
processes open sessions at Poisson arrival times drawn from a fixed seed (the same schedule
for every policy), each session 16 new tokens after a 6-token prompt. Each policy runs in
turn on the same swarm at a low and a contended arrival rate; then a gray failure: the
fastest replica of 0:6 turns 5x slower (SIGUSR1) a third into the run, and the share of new
sessions through it is reported per 10 s window. Prints per-token latency p50/p95/p99,
session completion and per-node traffic share; ``--repeats`` reruns everything and reports
medians (and the spread) across repeats. ``--json`` writes every figure, and the swarm, for
``scripts/simulate_routing.py --live FILE`` (the simulator calibrated to this run).

    python scripts/bench_routing_live.py [--repeats 1] [--duration 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

POLICIES = ("aco", "shortest", "shortest_load", "random")
# (span, step delay ms, network delay ms): three speeds (1:2:4) and three distances.
NODES = (
    ("0:6", 15, 2),
    ("0:6", 30, 20),
    ("0:6", 60, 2),
    ("6:12", 15, 20),
    ("6:12", 30, 2),
    ("6:12", 15, 40),
    ("0:4", 30, 10),
    ("4:8", 15, 10),
    ("8:12", 30, 2),
    ("0:12", 60, 10),
)
GRAY_NODE = 0  # the fast, near replica of 0:6: every policy likes it before it slows down
LOADS = {"low": 0.6, "contended": 3.0}  # sessions per second, all clients together
GRAY_LOAD = 1.5
CLIENTS = 3
PROMPT, NEW_TOKENS = 6, 16


# ---- one client process ------------------------------------------------------------------------
def client_main(args: argparse.Namespace) -> None:
    """Run this client's share of the schedule; print one JSON line per session."""
    import torch

    from swarmnode import DistributedModelForCausalLM
    from swarmnode.client.trace import ArrivalStamps

    starts = json.loads(args.schedule)
    results, lock = [], threading.Lock()
    with DistributedModelForCausalLM.from_pretrained(
        args.model, initial_peers=args.peers, routing=args.policy, request_timeout=30.0
    ) as model:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=1)  # route cache and streams warm

        def one(index: int, offset: float) -> None:
            ids = torch.randint(3, 200, (1, PROMPT), generator=torch.Generator().manual_seed(index))
            stamps = ArrivalStamps()
            record = {"at": offset, "ok": False, "gaps_ms": [], "chain": []}
            try:
                with model.inference_session(max_length=PROMPT + NEW_TOKENS) as session:
                    model.generate(ids, max_new_tokens=NEW_TOKENS, session=session, streamer=stamps)
                    first = session.failovers[0].failed if session.failovers else None
                    # The chain the router chose (a failover may have replaced one hop since).
                    record["chain"] = ([first.peer_id] if first else []) + [h.peer_id for h in session.chain]
                record.update(ok=True, gaps_ms=[1000 * g for g in stamps.token_gaps()])
            except Exception as e:  # noqa: BLE001 - a failed session is a result, not a crash
                record["error"] = f"{type(e).__name__}: {e}"[:200]
            with lock:
                results.append(record)

        while time.time() < args.start_at:
            time.sleep(0.01)
        threads = []
        for index, offset in starts:
            delay = args.start_at + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=one, args=(index, offset), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=120)
        estimates = getattr(model.remote.router, "estimates", {})
        misreports = {peer: e.misreports for peer, e in estimates.items() if e.misreports}
    for record in results:
        print(json.dumps(record), flush=True)
    print(json.dumps({"diag": {"misreports": misreports}}), flush=True)


# ---- the driver ----------------------------------------------------------------------------------
def schedule(rate: float, duration: float, seed: int) -> list[list[tuple[int, float]]]:
    """Poisson arrivals over ``duration`` s, dealt round-robin to the clients."""
    rng, t, out, index = random.Random(seed), 0.0, [[] for _ in range(CLIENTS)], 0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out[index % CLIENTS].append((index, t))
        index += 1


def run_policy(model: str, peers: list[str], policy: str, plan, on_start=None) -> list[dict]:
    start_at = time.time() + 12.0  # every client has joined the DHT by then
    log = tempfile.TemporaryFile("w+")  # the clients' stderr, shown if one fails
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                "--model",
                model,
                "--policy",
                policy,
                "--start-at",
                str(start_at),
                "--schedule",
                json.dumps(part),
                "--peers",
                *peers,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )  # fmt: skip
        for part in plan
    ]
    if on_start is not None:
        on_start(start_at)
    sessions = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            sessions += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if any(proc.returncode for proc in procs):
            log.seek(0)
            print(f"a {policy} client failed:\n" + log.read()[-3000:], file=sys.stderr)
        log.close()
    diagnostics = [s.pop("diag") for s in sessions if "diag" in s]
    sessions = [s for s in sessions if s]
    verdicts = sum(sum(d["misreports"].values()) for d in diagnostics)
    if verdicts:  # honest nodes whose reports a client found contradicted (all are honest here)
        print(f"  {policy}: {verdicts} claim-check verdicts against honest nodes", flush=True)
    return sessions


def summarize(sessions: list[dict], expected: int, names: dict[str, str]) -> dict:
    gaps = sorted(g for s in sessions if s["ok"] for g in s["gaps_ms"])
    pick = lambda q: gaps[min(len(gaps) - 1, int(q * (len(gaps) - 1)))] if gaps else float("nan")  # noqa: E731
    hops = [p for s in sessions if s["ok"] for p in s["chain"]]
    share = {names.get(p, p[:8]): round(hops.count(p) / max(1, len(hops)), 3) for p in sorted(set(hops))}
    return {
        "p50": pick(0.5),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "completed": sum(s["ok"] for s in sessions) / max(1, expected),
        "share": share,
    }


def gray_shares(sessions: list[dict], gray_peer: str, at: float, window: float = 10.0) -> list[tuple[float, float]]:
    """Share of new sessions (by start time) whose chain used the gray node, per window,
    relative to the slowdown."""
    out, t = [], -at
    last = max((s["at"] for s in sessions), default=0.0) - at
    while t < last:
        chosen = [s for s in sessions if t <= s["at"] - at < t + window and s["chain"]]
        if chosen:
            out.append((t, sum(gray_peer in s["chain"] for s in chosen) / len(chosen)))
        t += window
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per policy and load")
    parser.add_argument("--gray-duration", type=float, default=60.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--policies", nargs="*", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--loads", nargs="*", default=list(LOADS), choices=list(LOADS), help="arrival rates to run")
    parser.add_argument("--no-gray", action="store_true", help="skip the gray-failure run")
    parser.add_argument(
        "--node-flags",
        default="",
        help="extra `swarmnode join` flags for every node, one string (e.g. --node-flags=--no-batching: "
        "nodes that queue sessions' steps instead of batching them)",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--schedule", help=argparse.SUPPRESS)
    parser.add_argument("--peers", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return

    from swarmnode.launcher import LocalSwarm

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: LocalSwarm stops every node it started
    from swarmnode.models.tiny import PRESETS, write_checkpoint

    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir, env=isolated_profiles(workdir)) as swarm:
        model = Path(workdir) / "llama-12"
        write_checkpoint(model, **{**PRESETS["tiny-llama"], "num_hidden_layers": 12})
        swarm.start_bootstrap()
        procs = [
            swarm.start_node(str(model), span, "--debug-step-delay-ms", str(step), "--debug-network-delay-ms",
                             str(net), *args.node_flags.split(), wait=False, name=f"n{i}")
            for i, (span, step, net) in enumerate(NODES)
        ]  # fmt: skip
        for proc in procs:
            swarm.wait_online(proc)
        names = {proc.info["peer_id"]: f"n{i}" for i, proc in enumerate(procs)}
        advertised = advertised_throughput(swarm.initial_peers, [proc.info["peer_id"] for proc in procs])
        print("swarm: " + ", ".join(f"n{i} {s} step {d} ms net {n} ms" for i, (s, d, n) in enumerate(NODES))
              + (f"; node flags: {args.node_flags}" if args.node_flags else ""))  # fmt: skip
        print("advertised tokens/s per block: " + ", ".join(f"n{i} {a:.0f}" for i, a in enumerate(advertised)))
        report = {
            "nodes": [
                dict(span=s, step_ms=d, net_ms=n, advertised_rps=a)
                for (s, d, n), a in zip(NODES, advertised, strict=True)
            ],
            "num_blocks": 12,
            "node_flags": args.node_flags,
            "clients": CLIENTS,
            "prompt": PROMPT,
            "tokens": NEW_TOKENS,
            "duration": args.duration,
            "loads": LOADS,
            "gray": {"node": GRAY_NODE, "rate": GRAY_LOAD, "duration": args.gray_duration,
                     "at": args.gray_duration / 3},
            "repeats": [],
        }  # fmt: skip
        for repeat in range(args.repeats):
            result = {}
            # Each repeat starts with another policy: whatever running first or after another
            # policy does to a run (a warmer machine, the last clients' DHT traffic) falls on all.
            order = args.policies[repeat % len(args.policies) :] + args.policies[: repeat % len(args.policies)]
            for load in args.loads:
                rate = LOADS[load]
                plan = schedule(rate, args.duration, seed=100 * repeat + len(load))
                expected = sum(len(part) for part in plan)
                for policy in order:
                    sessions = run_policy(str(model), swarm.initial_peers, policy, plan)
                    result[f"{load}/{policy}"] = summarize(sessions, expected, names)
                    print_row(repeat, load, policy, result[f"{load}/{policy}"], flush=True)
            if args.no_gray:
                report["repeats"].append(result)
                continue
            gray_peer = procs[GRAY_NODE].info["peer_id"]
            plan = schedule(GRAY_LOAD, args.gray_duration, seed=100 * repeat + 7)
            at = args.gray_duration / 3
            for policy in order:
                sessions = run_policy(
                    str(model),
                    swarm.initial_peers,
                    policy,
                    plan,
                    on_start=lambda start, at=at: slow_later(procs[GRAY_NODE], start + at),
                )
                procs[GRAY_NODE].signal(signal.SIGUSR1)  # back to normal for the next policy
                shares = gray_shares(sessions, gray_peer, at)
                result[f"gray/{policy}"] = {"shares": shares, **summarize(sessions, sum(map(len, plan)), names)}
                windows = "  ".join(f"{t:+.0f}s {s:.0%}" for t, s in shares)
                print(f"repeat {repeat} gray {policy:13s} share of new sessions on n{GRAY_NODE}: {windows}", flush=True)
            report["repeats"].append(result)
        print_medians(report, args.policies, args.loads)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


def isolated_profiles(workdir: str) -> dict[str, str]:
    """Every run profiles its nodes afresh: a node keeps its measured speed on disk per model,
    span and step delay, and the gray failure of an earlier run (a node 5x slower, as measured in
    service) would otherwise be what the fast replica advertises at the next start."""
    return {"SWARMNODE_PROFILES": str(Path(workdir) / "profiles")}


def advertised_throughput(peers: list[str], peer_ids: list[str]) -> list[float]:
    """What each node advertises (tokens/s per block), read as a user would (``swarmnode status``)."""
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode.cli", "status", "--initial-peers", *peers, "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (model,) = json.loads(out.stdout)["models"]
    rps = {n["peer_id"]: n["inference_rps"] for n in model["nodes"]}
    return [rps.get(p, 0.0) for p in peer_ids]


def slow_later(proc, when: float) -> None:
    """Send ``proc`` SIGUSR1 (the step-delay aid 5x longer: a gray failure) at time ``when``."""
    timer = threading.Timer(max(0.0, when - time.time()), proc.signal, (signal.SIGUSR1,))
    timer.daemon = True
    timer.start()


def print_row(repeat: int, load: str, policy: str, m: dict, flush: bool = True) -> None:
    share = " ".join(f"{k}:{v:.0%}" for k, v in m["share"].items())
    print(
        f"repeat {repeat} {load:9s} {policy:13s} p50 {m['p50']:6.1f} p95 {m['p95']:6.1f} p99 {m['p99']:6.1f} ms  "
        f"completed {m['completed']:.0%}  traffic {share}",
        flush=flush,
    )


def print_medians(report: dict, policies, loads) -> None:
    repeats = report["repeats"]
    print(f"\nmedians over {len(repeats)} repeat(s) [min-max]")
    print("load       policy         p50 ms              p95 ms              p99 ms              completed")
    for load in loads:
        for policy in policies:
            key, cells = f"{load}/{policy}", []
            for q in ("p50", "p95", "p99"):
                values = [r[key][q] for r in repeats]
                cells.append(f"{statistics.median(values):6.1f} [{min(values):.0f}-{max(values):.0f}]".ljust(20))
            done = statistics.median(r[key]["completed"] for r in repeats)
            print(f"{load:10s} {policy:13s}  {''.join(cells)}{done:.0%}")
    for load in loads:
        best = {q: min(statistics.median(r[f"{load}/{p}"][q] for r in repeats) for p in policies if p != "aco")
                for q in ("p50", "p95")}  # fmt: skip
        if "aco" in policies:
            aco = {q: statistics.median(r[f"{load}/aco"][q] for r in repeats) for q in ("p50", "p95")}
            for other in ("shortest", "shortest_load"):
                if other in policies:
                    o = statistics.median(r[f"{load}/{other}"]["p95"] for r in repeats)
                    below = 100 * (1 - aco["p95"] / o)
                    print(f"{load}: aco p95 {aco['p95']:.1f} vs {other} {o:.1f} ms: {below:+.1f}% below")
            print(f"{load}: aco p50 {aco['p50']:.1f} vs best baseline {best['p50']:.1f} ms: "
                  f"{100 * (aco['p50'] / best['p50'] - 1):+.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
