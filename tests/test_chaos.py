"""Chaos: 5 nodes, random kills and restarts every few seconds for 60 s while 3 client
processes generate. Every completed output must equal local generation; none may be lost."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmnode.launcher import LocalSwarm

pytestmark = pytest.mark.swarm
SPANS = ("0:4", "0:4", "4:8", "4:8", "0:8")  # any two nodes can be down and every block is still served
CHAOS_SECONDS = 60


def test_chaos_kills_and_restarts_lose_no_generation(tmp_path, llama_path):
    rng = random.Random(2026)
    stop_file = tmp_path / "stop"
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_bootstrap()
        identities = [str(tmp_path / f"node{i}.id") for i in range(len(SPANS))]
        nodes = [
            swarm.start_node(llama_path, span, "--identity", ident, wait=False)
            for span, ident in zip(SPANS, identities, strict=True)
        ]
        for node in nodes:
            swarm.wait_online(node)

        reports = [tmp_path / f"client{i}.json" for i in range(3)]
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("chaos_client.py")),
                    llama_path,
                    str(report),
                    str(stop_file),
                    str(i),
                    *swarm.initial_peers,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"client{i}.log", "w"),
            )
            for i, report in enumerate(reports)
        ]
        kills = restarts = 0
        try:
            end = time.monotonic() + CHAOS_SECONDS
            down: list[int] = []
            while time.monotonic() < end:
                time.sleep(rng.uniform(2.0, 4.0))
                if down and (len(down) == 2 or rng.random() < 0.5):
                    index = down.pop(0)
                    nodes[index] = swarm.start_node(
                        llama_path, SPANS[index], "--identity", identities[index], wait=False
                    )
                    restarts += 1
                else:
                    index = rng.choice([i for i in range(len(nodes)) if i not in down])
                    nodes[index].signal(signal.SIGKILL)
                    down.append(index)
                    kills += 1
        finally:
            stop_file.touch()
            for client in clients:
                try:
                    client.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    client.kill()
        results = [json.loads(r.read_text()) for r in reports]
    print(f"kills {kills}, restarts {restarts}, clients: {results}")
    assert kills >= 8 and restarts >= 4
    assert all(r["errors"] == [] for r in results), [r["errors"] for r in results]
    assert all(r["mismatches"] == 0 for r in results)
    assert sum(r["completed"] for r in results) >= 30
    assert sum(r["failovers"] for r in results) >= 1
