"""Failover: kill the node serving the tail of the chain at a random step, 10 times.

For each kill, prints the stall the client saw (the longest gap between two tokens minus
the median gap of that generation), whether the output still equals local generation,
and how long the membership layer took until every surviving node marked the victim
DEAD. Real processes on 127.0.0.1; not a test.

    python scripts/bench_failover.py [--kills 10] [--tokens 64]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.models.tiny import tiny_checkpoint
from swarmnode.net.protocol import read_response

TAIL_REPLICAS = 3


class Stamps:
    def __init__(self, after: int, action):
        self.after, self.action, self.times = after, action, []

    def put(self, value) -> None:
        self.times.append(time.monotonic())
        if len(self.times) == self.after + 1:
            self.action()

    def end(self) -> None:
        pass


def kill_tail(session, tails, killed: dict) -> None:
    """SIGKILL the node serving the session's last hop; note which and when in ``killed``."""
    victim_id = session.chain[-1].peer_id
    index = next(i for i, t in enumerate(tails) if t.info["peer_id"] == victim_id)
    tails[index].signal(signal.SIGKILL)
    killed.update(index=index, peer=victim_id, at=time.monotonic())


def all_survivors_see_dead(model, survivors, victim_id) -> bool:
    connection = model.connection
    for peer in survivors:
        try:
            response = connection.run(connection.stub(peer).rpc_info(runtime_pb2.ExpertUID(), timeout=2))
            view = read_response(response, peer)[0]["membership"]
        except Exception:  # noqa: BLE001 - a node busy or gone counts as "not yet"
            return False
        if view.get(victim_id) != "DEAD":
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    path = str(tiny_checkpoint("tiny-llama"))
    prompt = torch.tensor([[11, 22, 33, 44, 55, 66, 77]])
    expected = AutoModelForCausalLM.from_pretrained(path).generate(prompt, max_new_tokens=args.tokens, do_sample=False)
    stalls, detections, identical = [], [], 0
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        swarm.start_bootstrap()
        identities = [str(Path(workdir) / f"tail{i}.id") for i in range(TAIL_REPLICAS)]
        tails = [swarm.start_node(path, "4:8", "--identity", ident, wait=False) for ident in identities]
        nodes = [swarm.start_node(path, "0:4", wait=False), *tails]
        for node in nodes:
            swarm.wait_online(node)
        with DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers) as model:
            for trial in range(args.kills):
                at_step = rng.randint(3, args.tokens - 5)
                killed: dict = {}
                with model.inference_session(max_length=prompt.shape[1] + args.tokens) as session:
                    stamps = Stamps(at_step, lambda s=session, k=killed: kill_tail(s, tails, k))
                    out = model.generate(prompt, max_new_tokens=args.tokens, session=session, streamer=stamps)
                gaps = [b - a for a, b in zip(stamps.times[1:], stamps.times[2:], strict=False)]
                stall = max(gaps) - statistics.median(gaps)
                identical += int(torch.equal(out, expected))
                survivors = [n.info["peer_id"] for n in nodes if n.alive() and n.info["peer_id"] != killed["peer"]]
                while not all_survivors_see_dead(model, survivors, killed["peer"]):
                    if time.monotonic() - killed["at"] > 30:
                        break
                    time.sleep(0.05)
                detection = time.monotonic() - killed["at"]
                stalls.append(stall)
                detections.append(detection)
                print(
                    f"kill {trial + 1}: at token {at_step}, stall {1000 * stall:.0f} ms, "
                    f"all survivors saw DEAD after {detection:.2f} s, identical output: {torch.equal(out, expected)}"
                )
                index = killed["index"]
                tails[index] = swarm.start_node(path, "4:8", "--identity", identities[index])
                nodes = [n for n in nodes if n.info.get("peer_id") != killed["peer"]] + [tails[index]]
    print(
        f"stall over {len(stalls)} kills: median {1000 * statistics.median(stalls):.0f} ms, "
        f"max {1000 * max(stalls):.0f} ms"
    )
    print(
        f"detection by gossip (every survivor marks DEAD): median {statistics.median(detections):.2f} s, "
        f"max {max(detections):.2f} s"
    )
    print(f"outputs identical to local generation: {identical}/{len(stalls)}")


if __name__ == "__main__":
    main()
