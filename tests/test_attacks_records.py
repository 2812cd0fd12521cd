"""Attacks on the DHT records with real processes: a record about someone else, nonsense
numbers, verdicts from a non-member or in another member's name, unsigned values — all
ignored by every reader, and the swarm keeps serving."""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig
from swarmnode.launcher import LocalSwarm
from swarmnode.monitor.health import verdict_subjects
from swarmnode.net.dht import _store_records, get_dht_time, store_records
from swarmnode.records import DeadVerdict, NodeRecord, NodeState, dead_key, servers_key, verdict_subkey
from tests.conftest import status_cli, swarm_client

pytestmark = pytest.mark.swarm


def store_unsigned(connection, items, ttl=30.0) -> None:
    """Write raw values, as a peer running other software could."""
    work = partial(_store_records, items=items, expiration=get_dht_time() + ttl)
    connection.dht.run_coroutine(work, return_future=True).result(10)


def test_forged_records_and_verdicts_are_ignored(tmp_path, llama_path):
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(llama_path, span, wait=False) for span in ("0:4", "4:8")]
        for node in nodes:
            swarm.wait_online(node)
        model_id = nodes[0].info["model"]
        victim, bystander = nodes[0].info["peer_id"], nodes[1].info["peer_id"]
        attacker = SwarmConnection(ClientConfig(initial_peers=tuple(swarm.initial_peers)))
        try:
            me, now = attacker.identity.peer_id, time.time()
            hijack = NodeRecord(victim, NodeState.OFFLINE, 0, 8, inference_rps=1e6, timestamp=now + 60,
                                incarnation=int(now * 1000) + 1)  # fmt: skip
            greedy = NodeRecord(me, NodeState.ONLINE, 0, 8, timestamp=now).to_wire() | {"inference_rps": float("inf")}
            signed = [
                (servers_key(model_id), victim, hijack.to_wire()),  # signed by us, about them
                (servers_key(model_id), me, greedy),  # our own, with infinite speed
                (dead_key(model_id), verdict_subkey(victim, me), DeadVerdict(victim, 1 << 40, me).to_wire()),
                (
                    dead_key(model_id),
                    verdict_subkey(victim, bystander),  # in a member's name
                    DeadVerdict(victim, 1 << 40, bystander).to_wire(),
                ),  # fmt: skip
            ]
            store_records(attacker.dht, attacker.identity, signed, ttl=30).result(10)
            unsigned = [(servers_key(model_id), victim, hijack.to_wire()),
                        (dead_key(model_id), verdict_subkey(victim, bystander),
                         DeadVerdict(victim, 1 << 40, bystander).to_wire())]  # fmt: skip
            store_unsigned(attacker, unsigned)
            snapshot = attacker.run(attacker.snapshot(model_id, 8, max_age=0), timeout=30)
            assert set(snapshot.nodes) == {victim, bystander}
            assert snapshot.nodes[victim].state == NodeState.ONLINE and snapshot.nodes[victim].end == 4
            assert snapshot.dead == {}
            assert verdict_subjects(snapshot) == {}  # not even counted as a member's verdict by the monitor
            assert {v.reporter for v in snapshot.verdicts} <= {me}  # the forgery in a member's name never arrived
        finally:
            attacker.close()
        report = status_cli(swarm.initial_peers)
        assert {(n["peer_id"], n["state"], n["start"], n["end"]) for n in report["nodes"]} == {
            (victim, "ONLINE", 0, 4),
            (bystander, "ONLINE", 4, 8),
        }
        with swarm_client(swarm, llama_path) as model:  # a client still routes through both nodes
            out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
            assert out.shape == (1, 7)
