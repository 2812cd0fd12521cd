"""Gossip membership with real processes: a SIGKILLed node is marked dead by every survivor
within 5 s, and `swarmnode status` shows it dead long before its record would expire."""

import signal
import time

import pytest
from hivemind.proto import runtime_pb2

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig
from swarmnode.launcher import LocalSwarm
from swarmnode.net.protocol import read_response
from tests.conftest import status_cli

pytestmark = pytest.mark.swarm


def views(connection, nodes):
    result = {}
    for node in nodes:
        peer = node.info["peer_id"]
        response = connection.run(connection.stub(peer).rpc_info(runtime_pb2.ExpertUID(), timeout=5))
        result[peer] = read_response(response, peer)[0]["membership"]
    return result


def wait_until(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_sigkilled_node_is_declared_dead_everywhere_within_5s(tmp_path, llama_path):
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        # a long announce period: the dead node's record stays ONLINE in the DHT all along
        nodes = [
            swarm.start_node(llama_path, span, "--announce-period", "30", wait=False)
            for span in ("0:4", "4:8", "0:4", "4:8")
        ]
        for node in nodes:
            swarm.wait_online(node)
        peers = {n.info["peer_id"] for n in nodes}
        connection = SwarmConnection(ClientConfig(initial_peers=tuple(swarm.initial_peers)))
        try:
            everyone_knows_everyone = lambda: all(  # noqa: E731
                set(view) == peers - {peer} and set(view.values()) == {"ALIVE"}
                for peer, view in views(connection, nodes).items()
            )
            assert wait_until(everyone_knows_everyone, 20), views(connection, nodes)

            victim, survivors = nodes[1], [nodes[0], nodes[2], nodes[3]]
            victim_id = victim.info["peer_id"]
            victim.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            all_dead = lambda: all(v.get(victim_id) == "DEAD" for v in views(connection, survivors).values())  # noqa: E731
            assert wait_until(all_dead, 10, interval=0.1), views(connection, survivors)
            detected_in = time.monotonic() - killed_at
            print(f"every survivor marked the killed node DEAD after {detected_in:.2f} s")
            assert detected_in <= 5.0, detected_in
            assert set().union(*(set(v.values()) for v in views(connection, survivors).values())) >= {"ALIVE"}
        finally:
            connection.close()

        states = {n["peer_id"]: n["state"] for n in status_cli(swarm.initial_peers)["nodes"]}
        assert states[victim_id] == "DEAD"
        assert sorted(states.values()) == ["DEAD", "ONLINE", "ONLINE", "ONLINE"]
