"""The planner on a live local swarm: predicted per-token latency against measured, and the plan
against an even split (issue #13, part 5).

Three devices made different with the per-block delay testing aid (``--debug-block-delay-ms``)
and their memory budgets (``--max-memory``): they join, the planner surveys the live swarm
(records, shared observations, round trips pinged by the surveying client: ``swarmnode plan
--initial-peers``) and writes a devices file; the devices restart with ``join --plan FILE
--plan-device NAME``; a client generates and its per-token latency is compared with the plan's
prediction. Then the same devices serve an even split of the blocks and are measured the same
way.

    python scripts/check_planner_live.py [--tokens 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarmnode import DistributedModelForCausalLM  # noqa: E402
from swarmnode.client.trace import ArrivalStamps  # noqa: E402
from swarmnode.launcher import LocalSwarm  # noqa: E402
from swarmnode.models import block_parameter_count, load_model_spec  # noqa: E402
from swarmnode.models.tiny import tiny_checkpoint  # noqa: E402
from swarmnode.server.planner import even_split, plan, problem_from_toml  # noqa: E402

CACHE_TOKENS = 256
# name: (per-block delay ms, blocks its memory holds)
DEVICES = {"fast": (2.0, 4), "mid": (6.0, 8), "slow": (15.0, 8)}


def device_args(name: str, per_block_bytes: int) -> list[str]:
    delay_ms, capacity = DEVICES[name]
    return ["--public-name", name, "--debug-block-delay-ms", str(delay_ms),
            "--max-memory", str(int((capacity + 0.5) * per_block_bytes)), "--cache-tokens", str(CACHE_TOKENS),
            "--no-profile-cache"]  # fmt: skip


def start_devices(swarm: LocalSwarm, model: str, how: dict[str, list[str]], per_block: int) -> list:
    """Start the named devices at once (``how``: each one's --blocks value and extra flags)."""
    nodes = [swarm.start_node(model, blocks, *extra, *device_args(name, per_block), wait=False, name=name)
             for name, (blocks, *extra) in how.items()]  # fmt: skip
    for node in nodes:
        swarm.wait_online(node)
    return nodes


def stop(nodes) -> None:
    for node in nodes:
        node.stop()


def per_token_ms(swarm: LocalSwarm, model: str, tokens: int, rounds: int = 3) -> float:
    """Median time between consecutive generated tokens, over ``rounds`` generations."""
    gaps = []
    prompt = torch.tensor([[5, 3, 8, 1, 9, 2]])
    with DistributedModelForCausalLM.from_pretrained(model, initial_peers=swarm.initial_peers) as client:
        client.generate(prompt, max_new_tokens=4)  # warm-up: routes, pings, connections
        for _ in range(rounds):
            stamps = ArrivalStamps()
            client.generate(prompt, max_new_tokens=tokens, streamer=stamps)
            gaps += stamps.token_gaps()[1:]  # steady state: the first gap between new tokens is left out
    return 1000 * statistics.median(gaps)


def run(tokens: int, workdir: Path, rounds: int = 3) -> dict:
    model = str(tiny_checkpoint("tiny-llama", root=workdir / "tiny-llama"))
    spec = load_model_spec(model)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    per_block = block_parameter_count(spec) * 4 + 2 * kv_heads * head_dim * 4 * CACHE_TOKENS
    devices_file = workdir / "devices.toml"
    with LocalSwarm(workdir / "swarm") as swarm:
        swarm.start_bootstrap()
        # 1. The devices join (each as much of the model as its memory holds) and serve a little,
        # so clients' shared observations exist; the planner surveys the live swarm.
        nodes = start_devices(swarm, model, {"fast": ["0:4"], "mid": ["0:8"], "slow": ["0:8"]}, per_block)
        per_token_ms(swarm, model, 8, rounds=1)
        survey = subprocess.run(
            [sys.executable, "-m", "swarmnode.cli", "plan", "--initial-peers", *swarm.initial_peers,
             "--write", str(devices_file)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if survey.returncode != 0:
            raise RuntimeError(f"swarmnode plan failed: {survey.stderr}")
        print(survey.stdout, file=sys.stderr)
        problem, objective = problem_from_toml(devices_file.read_text())
        best = plan(problem, objective)
        stop(nodes)
        # 2. The devices the plan uses restart with join --plan and are measured.
        used = {stage.device: ["auto", "--plan", str(devices_file), "--plan-device", stage.device]
                for stage in best.stages}  # fmt: skip
        nodes = start_devices(swarm, model, used, per_block)
        planned_ms = per_token_ms(swarm, model, tokens, rounds)
        stop(nodes)
        # 3. The same devices, all three, on an even split.
        even = even_split(problem)
        nodes = start_devices(swarm, model, {s.device: [f"{s.start}:{s.end}"] for s in even.stages}, per_block)
        even_ms = per_token_ms(swarm, model, tokens, rounds)
        stop(nodes)
    return {
        "devices": {d.name: {"capacity": d.capacity, "block_ms": round(1000 * d.block_s, 3)} for d in problem.devices},
        "round_trip_ms": {d.name: round(2000 * problem.transfer_s("client", d.name), 3) for d in problem.devices},
        "plan": [f"{s.device} {s.start}:{s.end}" for s in best.stages],
        "predicted_ms": round(1000 * best.latency_s, 2),
        "measured_ms": round(planned_ms, 2),
        "measured_over_predicted": round(planned_ms / (1000 * best.latency_s), 3),
        "even_split": [f"{s.device} {s.start}:{s.end}" for s in even.stages],
        "even_predicted_ms": round(1000 * even.latency_s, 2),
        "even_measured_ms": round(even_ms, 2),
        "even_over_planned": round(even_ms / planned_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.tokens, Path(tmp))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
