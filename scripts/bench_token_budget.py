"""Every millisecond between two tokens: per-token latency and time to first token through
1, 2 and 3 hops against local transformers, with a breakdown of where the time goes.

For each model (the built-in SmolLM2-135M-Instruct and the small test model) and each hop
count, it starts a real local swarm (bootstrap + nodes on 127.0.0.1), generates greedily
with tracing on (swarmnode.client.trace), and prints, for one steady-state token (the mean
over the tokens after the first), the client's own work, each hop's network round trip
minus the node's handling, each node's queueing and compute, and what is left between
the caller and the generation loop; the named parts must add up to the measured gap
within 10%. The same for the first token (routing, stream opening, the prompt step).
Local generation runs in the same process, before and after the swarm runs, with the
same torch thread count as the nodes, twice over: transformers as loaded ("local"), and the
same model with the packed weight layout our nodes and client use on CPU ("local, same
kernels", swarmnode/models/layout.py), so that the gap to the second is what the swarm costs
beyond compute; and a third time, the same kernels on one torch thread, as each node decodes
("local, same kernels, 1 thread"). The first line also gives the floors: a TCP and a bare
libp2p round trip on 127.0.0.1, back to back and each after 10 ms idle, and what decoding one
hop's answer costs hot and right after a 16 ms sleep (as long as a hop's compute: every
process on the token path wakes from such a wait, and on this machine the same code then runs
many times slower).

With ``--pause S``, it also times the first token of requests that each come S seconds after
the last (a chat user typing): ours against local transformers after the same pauses.

    python scripts/bench_token_budget.py [--models smollm2 tiny-llama] [--hops 1 2 3] [--tokens 48] [--pause 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarmnode.client.model import DistributedModelForCausalLM  # noqa: E402
from swarmnode.client.text import chat_prompt_ids  # noqa: E402
from swarmnode.client.trace import ArrivalStamps  # noqa: E402
from swarmnode.demo import even_spans  # noqa: E402
from swarmnode.launcher import LocalSwarm  # noqa: E402
from swarmnode.models import load_model_spec, load_tokenizer  # noqa: E402
from swarmnode.models.layout import pack_block  # noqa: E402

QUESTION = "Tell me about the history of Paris in detail."
NODE_ENV = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_NODE_ENV", "").split() if "=" in kv)


def prompt_ids(spec) -> torch.Tensor:
    tokenizer = load_tokenizer(spec)
    if getattr(tokenizer, "chat_template", None):
        return torch.tensor([chat_prompt_ids(tokenizer, [{"role": "user", "content": QUESTION}])])
    return torch.tensor([tokenizer(QUESTION)["input_ids"]])


def local_run(model, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """(time to first token, median per-token gap) in ms, local transformers."""
    stamps = ArrivalStamps()
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                       streamer=stamps)  # fmt: skip
    return 1000 * (stamps.times[1] - began), 1000 * statistics.median(stamps.token_gaps())


def local_run_as(reference: tuple, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """``local_run`` of a (model, torch threads) reference; the thread count is restored after."""
    model, threads = reference
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return local_run(model, ids, tokens)
    finally:
        torch.set_num_threads(before)


def swarm_run(client, ids: torch.Tensor, tokens: int):
    """(ttft ms, per-token gaps ms, traces) of one traced generation."""
    mask = torch.ones_like(ids)
    with client.inference_session(max_length=ids.shape[1] + tokens) as session:
        session.tracing = True
        stamps = []
        began = time.perf_counter()
        for _ in client.stream_tokens(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                      session=session):  # fmt: skip
            stamps.append(time.perf_counter())
        traces = list(session.traces)
    gaps = [1000 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    return 1000 * (stamps[0] - began), gaps, traces, began


def tcp_loopback_rtt_ms(rounds: int = 2000) -> float:
    """Median round trip of 1 byte over a TCP connection on 127.0.0.1 (the floor of any hop)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(1):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    times = []
    with socket.create_connection(server.getsockname()) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            began = time.perf_counter()
            client.sendall(b"x")
            client.recv(1)
            times.append(time.perf_counter() - began)
    server.close()
    return 1000 * statistics.median(times)


def steady_breakdown(gaps: list[float], traces, hops: int) -> list[tuple[str, float]]:
    """Mean ms per steady-state token of each part (tokens 2..n: their traces and the gaps before them)."""
    steady = traces[1:]  # traces[i] made token i; gaps[i-1] ended at token i
    n = min(len(steady), len(gaps))
    steady, gaps = steady[:n], gaps[:n]
    handoffs = [1000 * (t.started - prev.finished) for prev, t in zip(traces, traces[1:], strict=False)][:n]

    def mean(values) -> float:
        return statistics.fmean(values) if values else 0.0

    rows = [
        ("client: embedding", mean([t.embed_ms for t in steady])),
        ("client: request building + serialization", mean([sum(h.build_ms for h in t.hops) for t in steady])),
        ("client: response decoding", mean([sum(h.parse_ms for h in t.hops) for t in steady])),
        ("client: head + logits processing + sampling", mean([t.head_ms for t in steady])),
        ("client: routing updates (report_step)", mean([sum(h.report_ms for h in t.hops) for t in steady])),
        ("client: loop bookkeeping (context, session, streamer)", mean([t.loop_ms for t in steady])),
        ("client: handoff to the caller's thread and back", mean(handoffs)),
    ]
    for i in range(hops):
        rows += [
            (f"hop {i + 1}: network round trip minus node handling", mean([t.hops[i].network_ms for t in steady])),
            (f"hop {i + 1}: node decoding/validation/bookkeeping", mean([t.hops[i].node_overhead_ms for t in steady])),
            (f"hop {i + 1}: node queueing", mean([t.hops[i].queue_ms for t in steady])),
            (f"hop {i + 1}: node compute", mean([t.hops[i].compute_ms for t in steady])),
        ]
    return rows


def first_breakdown(ttft: float, first, began: float, hops: int) -> list[tuple[str, float]]:
    rows = [
        ("before the first step (settings, session)", 1000 * (first.started - began)),
        ("routing (choosing the chain)", first.route_ms),
        ("opening hop streams", first.open_ms),
        ("prompt: embedding", first.embed_ms),
        ("prompt: request building + decoding", sum(h.build_ms + h.parse_ms + h.report_ms for h in first.hops)),
    ]
    for i, h in enumerate(first.hops[:hops]):
        rows += [
            (f"prompt: hop {i + 1} network minus node handling", h.network_ms),
            (f"prompt: hop {i + 1} node handling + queueing", h.node_ms - h.compute_ms),
            (f"prompt: hop {i + 1} node compute", h.compute_ms),
        ]
    rows += [("prompt: head + sampling + bookkeeping", first.head_ms + first.loop_ms)]
    return rows


def print_table(title: str, rows: list[tuple[str, float]], measured: float) -> float:
    named = sum(v for _, v in rows)
    print(f"  {title}")
    for name, value in rows:
        print(f"    {name:<58} {value:8.3f} ms")
    share = abs(measured - named) / measured
    print(f"    {'sum of the parts':<58} {named:8.3f} ms  (measured {measured:.3f} ms; unexplained {100 * share:.1f}%)")
    return share


def after_pauses(first_token, pause_s: float, times: int) -> list:
    """``first_token()`` called ``times`` times, each after ``pause_s`` seconds of nothing: the
    first token a chat or API user sees when a request comes a while after the last."""
    results = []
    for _ in range(times):
        time.sleep(pause_s)
        results.append(first_token())
    return results


def print_pauses(name: str, ours: list[float], theirs: list[float], pause_s: float) -> None:
    mine, local = statistics.median(ours), statistics.median(theirs)
    print(f"  first token after a {pause_s:g} s pause (median of {len(ours)}): ours {mine:.2f} ms, {name} "
          f"{local:.2f} ms ({mine - local:+.2f} ms); ours: {', '.join(f'{t:.2f}' for t in ours)} ms")  # fmt: skip


def run_model(
    name: str, hop_counts: list[int], tokens: int, repeats: int, threads: int, rtt: float, pause: float = 0.0
) -> None:
    from transformers import AutoModelForCausalLM

    spec = load_model_spec(name)
    ids = prompt_ids(spec)
    torch.set_num_threads(threads)
    local_model = AutoModelForCausalLM.from_pretrained(spec.path).eval()
    # The same model with the kernels our nodes and client use (models/layout.py), so that
    # "ours minus this" is what the swarm costs beyond compute, whatever the kernels.
    same_kernels = pack_block(AutoModelForCausalLM.from_pretrained(spec.path).eval())
    # The nodes decode on one torch thread each (docs/architecture.md, "The step scheduler"): the
    # third reference runs the same kernels locally on one thread, so that the swarm's cost beyond
    # compute can be told from the thread count co-located nodes are held to.
    references = {"local": (local_model, threads), "local, same kernels": (same_kernels, threads),
                  "local, same kernels, 1 thread": (same_kernels, 1)}  # fmt: skip
    local = {name: [] for name in references}
    for name in references:
        local_run_as(references[name], ids, 4)  # warm-up
        local[name] += [local_run_as(references[name], ids, tokens) for _ in range(repeats)]
    print(f"\n== {spec.name}: {spec.num_blocks} blocks, hidden {spec.hidden_size}, prompt {ids.shape[1]} tokens, "
          f"{tokens} new tokens, torch threads {threads} (local and every node) ==")  # fmt: skip
    for hops in hop_counts:
        with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir, env=NODE_ENV) as swarm:
            swarm.start_bootstrap()
            spans = even_spans(spec.num_blocks, hops)
            nodes = [swarm.start_node(spec.path, s, "--num-threads", str(threads), wait=False) for s in spans]
            for node in nodes:
                swarm.wait_online(node)
            with DistributedModelForCausalLM.from_pretrained(spec.path, initial_peers=swarm.initial_peers) as client:
                swarm_run(client, ids, 4)  # warm-up: route cached, code paths hot
                runs = [swarm_run(client, ids, tokens) for _ in range(repeats)]
                if pause:
                    paused = after_pauses(lambda: swarm_run(client, ids, 2), pause, repeats)
        for name in references:
            local[name] += [local_run_as(references[name], ids, tokens)]  # local again after, against drift
        if pause:  # local transformers after the same pauses (the kernels' own wake-up cost)
            local_paused = after_pauses(lambda: local_run_as(references["local"], ids, 2)[0], pause, repeats)
        ttft = statistics.median(r[0] for r in runs)
        per_token = statistics.median(statistics.median(r[1]) for r in runs)
        best = min(runs, key=lambda r: statistics.median(r[1]))
        spread = ", ".join(f"{statistics.median(r[1]):.2f}" for r in runs)
        print(f"\n{hops} hop(s) {' '.join(spans)}: per token {per_token:.2f} ms, first token {ttft:.2f} ms; "
              f"runs' per-token medians: {spread} ms")  # fmt: skip
        for name, runs_of in local.items():
            local_ttft = statistics.median(t for t, _ in runs_of)
            local_tok = statistics.median(g for _, g in runs_of)
            print(f"  vs {name}: per token {local_tok:.2f} ms ({per_token - local_tok:+.2f} ms), "
                  f"first token {local_ttft:.2f} ms ({ttft - local_ttft:+.2f} ms)")  # fmt: skip
            if hops == 2:
                target = local_tok + 2 * rtt + 2
                print(f"    target per token <= {name} + 2 x loopback RTT + 2 ms = {target:.2f} ms: "
                      f"{'MET' if per_token <= target else 'MISSED'}")  # fmt: skip
            print(f"    target first token <= {name} + 10 ms = {local_ttft + 10:.2f} ms: "
                  f"{'MET' if ttft <= local_ttft + 10 else 'MISSED'}")  # fmt: skip
        _, gaps, traces, began = best
        print_table("one steady-state token (mean over tokens 2..n of the best run):",
                    steady_breakdown(gaps, traces, hops), statistics.fmean(gaps))  # fmt: skip
        print_table("the first token (best run):", first_breakdown(best[0], traces[0], began, hops), best[0])
        if pause:
            print_pauses("local", [r[0] for r in paused], local_paused, pause)
            middle = sorted(paused, key=lambda r: r[0])[len(paused) // 2]
            print_table("the first token after the pause (the median run):",
                        first_breakdown(middle[0], middle[2][0], middle[3], hops), middle[0])  # fmt: skip


ECHO_HANDLE = "bench_token_budget.echo"


async def _echo(reader, writer) -> None:
    """Answer each length-prefixed message with itself until the stream ends."""
    while True:
        try:
            size = int.from_bytes(await reader.readexactly(4), "big")
            data = await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        writer.write(size.to_bytes(4, "big") + data)
        await writer.drain()


async def _echo_server(ready) -> None:
    from hivemind.p2p import P2P

    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    await p2p.add_binary_stream_handler(ECHO_HANDLE, lambda _, reader, writer: _echo(reader, writer))
    tcp = await asyncio.start_server(_echo, "127.0.0.1", 0)
    ready.put(([str(a) for a in await p2p.get_visible_maddrs()], tcp.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


def _run_echo_server(ready) -> None:
    import uvloop

    uvloop.run(_echo_server(ready))


def echo_rtts_ms(payload: int, idle_s: float, rounds: int = 300) -> tuple[float, float]:
    """(TCP, libp2p) median round trips of a ``payload``-byte message to another process on
    127.0.0.1: over a bare asyncio TCP connection, and over a hivemind libp2p stream (a p2pd
    daemon on each side: the transport every hop uses), each message sent ``idle_s`` after the
    last answer came (0: back to back; a hop's compute long: as on the token path, where every
    process of the hop has gone to sleep by the time the next message comes)."""
    import multiprocessing

    import uvloop
    from hivemind.p2p import P2P, PeerID

    from swarmnode.net.lifeline import start_lifeline, stop_lifeline

    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    server = spawn.Process(target=_run_echo_server, args=(ready,), daemon=True)
    server.start()
    # A bench stopped by a signal skips the cleanup below: the echo server and its p2pd go with it anyway.
    lifeline = start_lifeline([server.pid])

    async def rounds_over(reader, writer) -> float:
        message, times = payload.to_bytes(4, "big") + bytes(payload), []
        for _ in range(rounds):
            if idle_s:
                time.sleep(idle_s)  # the whole process sleeps, as a client waiting on a hop does
            began = time.perf_counter()
            writer.write(message)
            await writer.drain()
            await reader.readexactly(4 + payload)
            times.append(time.perf_counter() - began)
        writer.close()
        return 1000 * statistics.median(times)

    async def measure(addresses: list[str], port: int) -> tuple[float, float]:
        tcp = await rounds_over(*await asyncio.open_connection("127.0.0.1", port))
        p2p = await P2P.create(initial_peers=addresses)
        try:
            peer = PeerID.from_base58(addresses[0].rsplit("/p2p/", 1)[1])
            _, reader, writer = await p2p.call_binary_stream_handler(peer, ECHO_HANDLE)
            return tcp, await rounds_over(reader, writer)
        finally:
            await p2p.shutdown()

    try:
        return uvloop.run(measure(*ready.get(timeout=60)))
    finally:
        server.kill()
        server.join()
        stop_lifeline(lifeline)


def idle_penalty_us(rounds: int = 40) -> tuple[float, float]:
    """(hot, after 16 ms idle) median microseconds of decoding and checking one SmolLM2-sized hop
    answer: what the same code costs right after it ran, and after the thread slept as long as a
    hop's compute (every process on the token path wakes from such a wait)."""
    from swarmnode.client.session import hop_output
    from swarmnode.client.steps import StepInput
    from swarmnode.net.protocol import make_response

    hidden = torch.randn(1, 1, 576)
    response, sent = make_response({"compute_ms": 15.0, "step": 3}, (hidden,)), StepInput(hidden)

    def timed() -> float:
        began = time.perf_counter()
        hop_output(response, "peer", sent)
        return 1e6 * (time.perf_counter() - began)

    hot, cold = [], []
    for _ in range(rounds):
        time.sleep(0.016)
        cold.append(timed())
        hot.append(timed())
    return statistics.median(hot), statistics.median(cold)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny-llama"])
    parser.add_argument("--hops", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pause", type=float, default=0.0, help="also time first tokens after this long idle (s)")
    args = parser.parse_args()
    rtt = tcp_loopback_rtt_ms()
    hop_bytes = 4 * 576  # one SmolLM2 token's hidden states in float32
    floors = {idle: echo_rtts_ms(hop_bytes, idle) for idle in (0.0, 0.010)}
    hot, cold = idle_penalty_us()
    echoes = "; ".join(
        f"{1000 * t:.0f} / {1000 * p:.0f} us " + (f"after {1000 * idle:.0f} ms idle" if idle else "back to back")
        for idle, (t, p) in floors.items()
    )
    print(f"machine: {torch.get_num_threads()} torch threads available; TCP loopback round trip {rtt * 1000:.1f} us "
          f"(1 byte, one process); {hop_bytes} B to another process and back, TCP / libp2p (two p2pd): {echoes}; "
          f"decoding one hop's answer {hot:.0f} us hot, {cold:.0f} us after 16 ms idle")  # fmt: skip
    for name in args.models:
        run_model(name, args.hops, args.tokens, args.repeats, args.threads, rtt, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
