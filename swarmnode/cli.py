"""The ``swarmnode`` command: bootstrap, join, plan, status, monitor, generate, chat, api, convert, keygen, demo.

Machine-readable lines go to stdout (a bootstrap peer's multiaddrs, a node's
``ONLINE`` line, generated text); logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from swarmnode.errors import SwarmNodeError

logger = logging.getLogger("swarmnode")


def _setup_logging(level: str) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run_async(coro) -> None:
    """Run ``coro`` on uvloop (faster I/O for the many small messages of a session), then make
    sure no helper process outlives this one."""
    import uvloop

    from swarmnode.net.lifeline import reap_children

    try:
        uvloop.run(coro)
    finally:
        reap_children()


def _say(line: str) -> None:
    print(line, flush=True)


async def _serve_until_signal(
    start: Callable[[], Awaitable[Any]], stop: Callable[[Any], Awaitable[None]], on_ready: Callable[[Any], None]
) -> None:
    """Start a component, run until SIGTERM/SIGINT, then stop it; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            os._exit(1)  # second signal: the user wants out now
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    component = await start()
    try:
        on_ready(component)
        await stopping.wait()
    finally:
        await stop(component)


# ---- bootstrap ---------------------------------------------------------------------------------------
def cmd_bootstrap(args: argparse.Namespace) -> int:
    from swarmnode.net.dht import full_maddrs, start_dht
    from swarmnode.net.lifeline import start_lifeline, stop_lifeline
    from swarmnode.net.swarmkey import load_swarm_key

    async def start():
        from swarmnode.net.reachability import serve_dial_back

        dht, _identity = start_dht(
            args.initial_peers,
            swarm_key=load_swarm_key(args.swarm_key),
            host_maddrs=args.host_maddrs,
            announce_maddrs=args.announce_maddrs,
            identity_path=args.identity,
            relay_service=True,  # bootstrap peers are reachable by definition: they relay for nodes that are not
        )
        lifeline = start_lifeline([dht.pid])
        await serve_dial_back(await dht.replicate_p2p())  # joining nodes ask: can you dial me back?
        return dht, lifeline

    async def stop(parts):
        dht, lifeline = parts
        dht.shutdown()
        stop_lifeline(lifeline)

    def ready(parts):
        for maddr in full_maddrs(parts[0]):
            _say(maddr)

    _run_async(_serve_until_signal(start, stop, ready))
    return 0


# ---- join --------------------------------------------------------------------------------------------
def cmd_join(args: argparse.Namespace) -> int:
    from swarmnode.config import NodeConfig, load_config
    from swarmnode.server.node import Node

    overrides = {
        name: getattr(args, name)
        for name in (
            "model",
            "initial_peers",
            "blocks",
            "model_id",
            "host_maddrs",
            "announce_maddrs",
            "device",
            "dtype",
            "quant",
            "weight_layout",
            "max_memory",
            "cache_tokens",
            "max_session_length",
            "num_threads",
            "announce_period",
            "throughput",
            "profile_cache",
            "public_name",
            "gossip_period",
            "suspicion_timeout",
            "metrics_port",
            "metrics_host",
            "max_sessions_per_peer",
            "max_cache_share_per_peer",
            "session_idle_timeout",
            "max_requests_per_peer_s",
            "batching",
            "gather",
            "prefill_chunk",
            "max_batch",
            "max_step_ms",
            "rebalance_period",
            "rebalance_margin",
            "reachability",
        )
    }
    overrides["identity_path"] = args.identity
    overrides["swarm_key_path"] = args.swarm_key
    if args.plan:
        overrides["blocks"] = _planned_blocks(args)
    config = load_config(NodeConfig, overrides, config_file=args.config)
    if not config.model:
        raise SwarmNodeError("--model is required (a checkpoint folder or a hub name)")

    async def start():
        node = Node(
            config,
            step_delay_s=args.debug_step_delay_ms / 1000,
            corrupt_output=args.debug_corrupt_output,
            misreport=args.debug_misreport,
            network_delay_s=args.debug_network_delay_ms / 1000,
            block_delay_s=args.debug_block_delay_ms / 1000,
        )
        await node.__aenter__()
        return node

    def ready(node):
        if args.debug_step_delay_ms:  # TESTING AID: a gray failure on demand (scripts/bench_routing_live.py)
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, node.slow_down)
        extras = f" metrics={node.metrics_addr}" if node.metrics_addr else ""
        extras += f" relay={node.relay}" if node.relay else ""
        extras += f" batching={'on' if node.batching else 'off'}"
        _say(f"ONLINE peer_id={node.peer_id} blocks={node.start}:{node.end} model={node.model_record.model_id}{extras}")
        node.on_move = lambda old, new, seconds: _say(
            f"MOVED peer_id={node.peer_id} from={old[0]}:{old[1]} blocks={new[0]}:{new[1]} seconds={seconds:.2f}"
        )

    _run_async(_serve_until_signal(start, lambda node: node.leave(), ready))
    return 0


def _planned_blocks(args: argparse.Namespace) -> str:
    """``--plan FILE --plan-device NAME``: this device's span in the plan of that devices file."""
    from swarmnode.server.planner import plan, problem_from_toml, span_for

    if args.blocks not in (None, "auto"):
        raise SwarmNodeError("give --blocks START:END or N, or --plan, not both")
    if not args.plan_device:
        raise SwarmNodeError("--plan needs --plan-device NAME: which of the file's devices this node is")
    try:
        problem, objective = problem_from_toml(_read_text(args.plan))
        start, end = span_for(plan(problem, objective), args.plan_device)
    except ValueError as e:
        raise SwarmNodeError(f"--plan {args.plan}: {e}") from e
    logger.info("the plan (%s) gives %s blocks %d:%d", objective, args.plan_device, start, end)
    return f"{start}:{end}"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SwarmNodeError(f"cannot read {path}: {e}") from e


def cmd_plan(args: argparse.Namespace) -> int:
    from swarmnode.server.planner import format_plan, plan, problem_from_toml, problem_to_toml

    if bool(args.file) == bool(args.initial_peers):
        raise SwarmNodeError("give a devices FILE, or --initial-peers to plan over a live swarm's nodes")
    try:
        if args.file:
            problem, objective = problem_from_toml(_read_text(args.file))
        else:
            from swarmnode.client.survey import survey_swarm

            problem, peers = survey_swarm(args.initial_peers, args.model_id, args.swarm_key or "")
            objective = "latency"
            for name, peer in peers.items():
                if name != peer:
                    logger.info("device %s is node %s", name, peer)
        objective = args.objective or objective
        _say(format_plan(problem, objective, plan(problem, objective)))
    except ValueError as e:
        raise SwarmNodeError(str(e)) from e
    if args.write:
        try:
            with open(args.write, "w", encoding="utf-8") as f:
                f.write(problem_to_toml(problem, objective))
        except OSError as e:
            raise SwarmNodeError(f"cannot write {args.write}: {e}") from e
        _say(f"wrote the devices file to {args.write}: each device joins with --plan {args.write} --plan-device NAME")
    return 0


# ---- status ------------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from swarmnode.client.status import format_status, swarm_status

    report = swarm_status(args.initial_peers, model_id=args.model, swarm_key_path=args.swarm_key or "")
    _say(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


# ---- monitor -----------------------------------------------------------------------------------------
def cmd_monitor(args: argparse.Namespace) -> int:
    from swarmnode.monitor.service import SwarmMonitor

    async def start():
        return SwarmMonitor(
            args.initial_peers,
            host=args.host,
            port=args.port,
            refresh_period=args.refresh_period,
            write_targets=args.write_targets,
            model_id=args.model,
            retention_s=args.forget_after,
            swarm_key_path=args.swarm_key or "",
        )

    async def stop(monitor):
        await asyncio.get_running_loop().run_in_executor(None, monitor.close)

    def ready(monitor):
        targets = f" targets={args.write_targets}" if args.write_targets else ""
        _say(f"MONITOR http://{args.host}:{monitor.port}/ metrics=http://{args.host}:{monitor.port}/metrics{targets}")

    _run_async(_serve_until_signal(start, stop, ready))
    return 0


# ---- generate, chat, api, convert -------------------------------------------------------------------
def _sampling_options(args: argparse.Namespace) -> dict:
    """Generation options from --temperature / --top-p / --top-k (unset: the model's own defaults)."""
    options = {}
    if args.temperature is not None:
        options["do_sample"] = args.temperature > 0
        if args.temperature > 0:
            options["temperature"] = args.temperature
    if getattr(args, "top_p", None) is not None:
        options["top_p"] = args.top_p
    if getattr(args, "top_k", None) is not None:
        options["top_k"] = args.top_k
    return options


def _open_model(args: argparse.Namespace, **client_options):
    """(client model, tokenizer): the tokenizer first, so a model without one fails before connecting."""
    from swarmnode.client.model import DistributedModelForCausalLM
    from swarmnode.models import load_model_spec, load_tokenizer

    tokenizer = load_tokenizer(load_model_spec(args.model))
    if args.swarm_key:
        client_options["swarm_key_path"] = args.swarm_key
    model = DistributedModelForCausalLM.from_pretrained(
        args.model, initial_peers=args.initial_peers, model_id=args.model_id, **client_options
    )
    return model, tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from swarmnode.client.text import IncrementalDecoder

    model, tokenizer = _open_model(args)
    with model:
        ids = torch.tensor([tokenizer(args.prompt)["input_ids"]])
        print(args.prompt, end="", flush=True)
        decoder = IncrementalDecoder(tokenizer)
        for token in model.stream_tokens(ids, max_new_tokens=args.max_new_tokens, **_sampling_options(args)):
            print(decoder.push(int(token[0])), end="", flush=True)
        print(decoder.finish(), flush=True)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from swarmnode.frontends.chat import Conversation, run_chat

    model, tokenizer = _open_model(args)
    with model:
        conversation = Conversation(
            model,
            tokenizer,
            max_length=args.max_length,
            max_new_tokens=args.max_new_tokens,
            system=args.system,
            options=_sampling_options(args),
        )
        return run_chat(conversation)


def cmd_api(args: argparse.Namespace) -> int:
    from swarmnode.frontends.api import serve

    model, tokenizer = _open_model(args, wait_for_servers=args.wait_for_servers)
    with model:
        serve(model, tokenizer, host=args.host, port=args.port, max_context=args.max_context)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from swarmnode.models import DTYPES
    from swarmnode.models.gguf import convert_gguf

    if args.dtype not in DTYPES:
        raise SwarmNodeError(f"--dtype must be one of {sorted(DTYPES)}")
    dest = convert_gguf(Path(args.source), Path(args.dest), dtype=DTYPES[args.dtype])
    _say(str(dest))
    return 0


# ---- demo --------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from swarmnode.demo import run_demo

    return run_demo(model=args.model, prompt=args.prompt, max_new_tokens=args.max_new_tokens)


def _client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial-peers", nargs="+", required=True)
    p.add_argument(
        "--model", required=True, help="checkpoint folder, hub name, GGUF file or smollm2 (for the head and tokenizer)"
    )
    p.add_argument("--model-id", default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's own setting)")
    _swarm_key_argument(p)
    p.add_argument("--top-p", type=float, default=None)


def _swarm_key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--swarm-key", default=None, help="a private swarm's key file (swarmnode keygen); default: public")


def cmd_keygen(args: argparse.Namespace) -> int:
    from swarmnode.net.swarmkey import generate_key_file

    path = generate_key_file(args.path)
    _say(f"wrote a new swarm key to {path}: give it (and --swarm-key {path}) to every member")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmnode", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default=os.environ.get("SWARMNODE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="run a DHT-only peer that others join through")
    p.add_argument("--host-maddrs", nargs="+", default=["/ip4/0.0.0.0/tcp/0"])
    p.add_argument("--announce-maddrs", nargs="*", default=[])
    p.add_argument("--initial-peers", nargs="*", default=[], help="other bootstrap peers, if any")
    p.add_argument("--identity", default="", help="private key file; created if missing (stable peer id)")
    _swarm_key_argument(p)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("join", help="serve a span of a model's blocks")
    p.add_argument("--model", default=None, help="checkpoint folder, hub name, GGUF file (converted once) or smollm2")
    p.add_argument("--initial-peers", nargs="+", default=None)
    p.add_argument("--blocks", default=None, help="auto (default), a count N, or START:END")
    p.add_argument("--model-id", default=None, help="DHT name of the model (default: from --model)")
    p.add_argument("--identity", default=None, help="private key file; created if missing")
    _swarm_key_argument(p)
    p.add_argument("--host-maddrs", nargs="+", default=None)
    p.add_argument("--announce-maddrs", nargs="*", default=None)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16 or float16")
    p.add_argument("--quant", default=None, choices=("none", "int8", "nf4"),
                   help="quantize the blocks' weights with bitsandbytes (default none)")  # fmt: skip
    p.add_argument("--weight-layout", default=None, choices=("auto", "dense", "packed"),
                   help="CPU weights in oneDNN's packed layout (faster) or as loaded; auto = packed "
                        "for float32 CPU nodes where it works (default)")  # fmt: skip
    p.add_argument("--max-memory", default=None, help="budget for weights + KV cache, e.g. 6GB")
    p.add_argument("--cache-tokens", type=int, default=None,
                   help="KV-cache tokens per block (default: 4096, or the session limit if longer)")  # fmt: skip
    p.add_argument("--max-session-length", type=int, default=None,
                   help="longest session in tokens (default 8192; at most --cache-tokens)")  # fmt: skip
    p.add_argument("--num-threads", type=int, default=None, help="torch threads (0 = torch default)")
    p.add_argument("--announce-period", type=float, default=None, help="seconds between re-announcements")
    p.add_argument("--plan", default=None, help="a devices file: serve the span its plan gives --plan-device")
    p.add_argument("--plan-device", default=None, help="which device of the --plan file this node is")
    p.add_argument("--throughput", default=None, help="auto (profile) or tokens/s per block")
    p.add_argument("--profile-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="start from this device's stored profile if there is one (default on)")  # fmt: skip
    p.add_argument("--public-name", default=None)
    p.add_argument("--gossip-period", type=float, default=None, help="seconds between SWIM probes (default 1)")
    p.add_argument("--suspicion-timeout", type=float, default=None, help="seconds SUSPECT before DEAD (default 1.5)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default 9156; 0 = off)")
    p.add_argument("--metrics-host", default=None, help="address the metrics endpoint binds (default 0.0.0.0)")
    p.add_argument("--max-sessions-per-peer", type=int, default=None, help="sessions one peer may hold (default 64)")
    p.add_argument("--max-cache-share-per-peer", type=float, default=None,
                   help="fraction of the KV budget one peer may hold (default 0.5)")  # fmt: skip
    p.add_argument("--session-idle-timeout", type=float, default=None,
                   help="seconds a session may sit idle before it is closed (default 300)")  # fmt: skip
    p.add_argument("--max-requests-per-peer-s", type=float, default=None,
                   help="session opens and unary RPCs per second per peer (default 200)")  # fmt: skip
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                   help="merge concurrent sessions' decoding steps into one forward (default on)")  # fmt: skip
    p.add_argument("--gather", action=argparse.BooleanOptionalAction, default=None,
                   help="with batching, wait up to one single step's time for decoding steps predicted to "
                        "arrive when the bigger batch serves more tokens per second (default on)")  # fmt: skip
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="prompt tokens per scheduler iteration, between decoding steps (default 256)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None,
                   help="decoding steps merged into one iteration at most (default 64)")  # fmt: skip
    p.add_argument("--max-step-ms", type=float, default=None,
                   help="admit a session only while the projected decoding step stays below this "
                        "(default: derived from the node's share of the model, see docs/architecture.md)")  # fmt: skip
    p.add_argument("--rebalance-period", type=float, default=None,
                   help="with --blocks auto or N: seconds between reconsidering the span when membership did not "
                        "change (default 60; 0 = never move)")  # fmt: skip
    p.add_argument("--rebalance-margin", type=float, default=None,
                   help="move only if the weakest block gains more than this fraction (default 0.2)")  # fmt: skip
    p.add_argument("--reachability", default=None, choices=("auto", "direct", "relay"),
                   help="auto (default): ask peers to dial this node back and serve through a relay (an "
                        "initial peer) if none can; direct: never relay; relay: always")  # fmt: skip
    p.add_argument("--config", default=None, help="TOML file with a [node] table")
    p.add_argument(
        "--debug-step-delay-ms",
        type=float,
        default=0.0,
        help="TESTING AID: sleep this long in every step (simulates a slow node; SIGUSR1 makes it 5x "
        "longer, a gray failure, and the next SIGUSR1 undoes that); off by default",
    )
    p.add_argument(
        "--debug-block-delay-ms",
        type=float,
        default=0.0,
        help="TESTING AID: sleep this long in every block of every step (a device slower per block, as the "
        "planner models devices); off by default",
    )
    p.add_argument(
        "--debug-network-delay-ms",
        type=float,
        default=0.0,
        help="TESTING AID: hold every answer to a client (steps and rpc_info, not gossip) and every push "
        "to another node (forwarding) this long (simulates a far node; this kernel has no netem); off by default",
    )
    p.add_argument(
        "--debug-corrupt-output",
        choices=("nan", "noise", "shape"),
        default="",
        help="TESTING AID: return corrupted hidden states (simulates a broken or hostile node); off by default",
    )
    p.add_argument(
        "--debug-misreport",
        action="store_true",
        help="TESTING AID: report busy 0 and ~0 ms compute with every step, whatever the truth (a node lying "
        "for traffic); off by default",
    )
    p.set_defaults(func=cmd_join, short_spin=True)

    p = sub.add_parser("plan", help="place a model's blocks on given devices (EdgeShard's dynamic program)")
    p.add_argument("file", nargs="?", default=None, help="a devices file (TOML; see swarmnode/server/planner.py)")
    p.add_argument("--initial-peers", nargs="+", default=None,
                   help="instead of a file: plan over this swarm's ONLINE nodes (records, shared "
                        "observations, and round trips pinged from here)")  # fmt: skip
    p.add_argument("--model-id", default=None, help="with --initial-peers: the model (default: the swarm's only one)")
    _swarm_key_argument(p)
    p.add_argument("--write", default=None, help="also write the devices file (for join --plan) here")
    p.add_argument("--objective", choices=("latency", "throughput"), default=None,
                   help="a token's latency, or the slowest stage (default: the file's, else latency)")  # fmt: skip
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="show the models, blocks and nodes of a swarm")
    p.add_argument("--initial-peers", nargs="+", required=True)
    p.add_argument("--model", default=None, help="model id (default: every model in the swarm)")
    p.add_argument("--json", action="store_true")
    _swarm_key_argument(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("monitor", help="export swarm health to Prometheus and serve a health page (read-only)")
    p.add_argument("--initial-peers", nargs="+", required=True)
    p.add_argument("--host", default="0.0.0.0", help="address the page and /metrics bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9157, help="port of the page, /api/health and /metrics (default 9157)")
    p.add_argument("--refresh-period", type=float, default=5.0, help="seconds between reads of the DHT (default 5)")
    p.add_argument("--write-targets", default=None, help="keep a Prometheus file-SD targets file of every node here")
    p.add_argument("--model", default=None, help="watch only this model id (default: every model)")
    p.add_argument("--forget-after", type=float, default=600.0,
                   help="seconds a node whose record expired stays listed as DEAD (default 600)")  # fmt: skip
    _swarm_key_argument(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("generate", help="generate text through the swarm, streamed to the terminal")
    p.add_argument("prompt")
    _client_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--top-k", type=int, default=None)
    p.set_defaults(func=cmd_generate, short_spin=True)

    p = sub.add_parser("chat", help="an interactive chat through the swarm (one session across turns)")
    _client_arguments(p)
    p.add_argument("--max-length", type=int, default=2048, help="tokens the session (whole conversation) may hold")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer")
    p.add_argument("--system", default=None, help="a system message")
    p.set_defaults(func=cmd_chat, short_spin=True)

    p = sub.add_parser("api", help="an OpenAI-compatible HTTP API backed by the swarm")
    _client_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-context", type=int, default=None, help="prompt + answer tokens (default: the model's)")
    p.add_argument("--wait-for-servers", type=float, default=10.0, help="seconds to wait for missing blocks (503)")
    p.set_defaults(func=cmd_api, short_spin=True)

    p = sub.add_parser("convert", help="convert a GGUF file into a sharded safetensors checkpoint")
    p.add_argument("source", help="the .gguf file")
    p.add_argument("dest", help="a new folder")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("keygen", help="write a new swarm key for a private swarm (never overwrites)")
    p.add_argument("path", help="the key file to create")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("demo", help="start a local swarm, generate through it, compare with local generation")
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (default: SmolLM2-135M-Instruct, a real chat model), tiny (random weights), "
        "a GGUF file or a checkpoint folder",
    )
    p.add_argument("--prompt", default=None, help="the question (chat models) or prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "short_spin", False):  # a node, or a client beside nodes: before torch loads
        from swarmnode.server.openmp_env import shorten_openmp_spin

        shorten_openmp_spin()
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except SwarmNodeError as e:
        print(f"swarmnode: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
