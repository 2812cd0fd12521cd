"""Attacks on gossip with real processes: forged suspicions and verdicts, from an outsider and
from a peer that made itself a member, must not take a live node out of the swarm."""

from __future__ import annotations

import time

import pytest

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig
from swarmnode.launcher import LocalSwarm
from swarmnode.net.dht import store_records
from swarmnode.net.protocol import GossipService, make_request
from swarmnode.records import NodeRecord, NodeState, servers_key
from tests.conftest import status_cli
from tests.test_swarm_gossip import views, wait_until

pytestmark = pytest.mark.swarm
HUGE = (1 << 64) - 1  # the largest incarnation the wire (msgpack uint64) carries


def forged_ping(connection, target: str, claimed_sender: object, incarnation: object, updates: list) -> None:
    """Send one rpc_ping from this connection's own peer id, saying whatever we like."""
    stub = GossipService.get_stub(connection.p2p, _peer(target))
    request = make_request({"from": claimed_sender, "incarnation": incarnation, "updates": updates})
    try:
        connection.run(stub.rpc_ping(request, timeout=5), timeout=10)
    except Exception:  # noqa: BLE001 - an answer or none: the attack is in the sending
        pass


def _peer(peer_id: str):
    from hivemind.p2p import PeerID

    return PeerID.from_base58(peer_id)


def attack(connection, nodes, victim: str, bystander: str, as_member: bool) -> None:
    me = str(connection.p2p.peer_id)
    forged = [[victim, 1, HUGE], [victim, 2, HUGE], [bystander, 2, HUGE], [victim, 1, 0], [bystander, 0, HUGE]]
    for node in nodes:
        target = node.info["peer_id"]
        forged_ping(connection, target, bystander, HUGE, forged)  # claims to be the bystander
        forged_ping(connection, target, me if as_member else "not a peer id", HUGE, forged)
        forged_ping(connection, target, me, -1, [["x", 7, 1], "garbage", [victim, 1, 2.5], None] * 20)


def test_forged_suspicions_and_verdicts_do_not_take_a_live_node_out(tmp_path, llama_path):
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(llama_path, span, wait=False) for span in ("0:4", "4:8", "0:8")]
        for node in nodes:
            swarm.wait_online(node)
        peers = {n.info["peer_id"] for n in nodes}
        victim, bystander = nodes[0].info["peer_id"], nodes[1].info["peer_id"]
        connection = SwarmConnection(ClientConfig(initial_peers=tuple(swarm.initial_peers)))
        try:
            healthy = lambda: all(  # noqa: E731
                set(view) == peers - {peer} and set(view.values()) == {"ALIVE"}
                for peer, view in views(connection, nodes).items()
            )
            assert wait_until(healthy, 20), views(connection, nodes)

            attack(connection, nodes, victim, bystander, as_member=False)  # an outsider
            # the attacker makes itself a member: a record of its own among the model's servers
            record = NodeRecord(str(connection.p2p.peer_id), NodeState.ONLINE, 0, 1, timestamp=time.time(),
                                incarnation=int(time.time() * 1000))  # fmt: skip
            item = (servers_key(nodes[0].info["model"]), record.peer_id, record.to_wire())
            store_records(connection.dht, connection.identity, [item], ttl=30).result(10)
            time.sleep(3)  # the nodes' seed loops (2 s) read it
            for _ in range(3):
                attack(connection, nodes, victim, bystander, as_member=True)
                time.sleep(1)
            time.sleep(4)  # longer than a suspicion timeout (1.5 s) plus a protocol period

            final = views(connection, nodes)
            for peer, view in final.items():
                assert {p: s for p, s in view.items() if p in peers} == dict.fromkeys(peers - {peer}, "ALIVE"), final
        finally:
            connection.close()
        states = {n["peer_id"]: n["state"] for n in status_cli(swarm.initial_peers)["nodes"] if n["peer_id"] in peers}
        assert states == dict.fromkeys(peers, "ONLINE")
        for node in nodes:
            log = node.log_path.read_text()
            assert "Traceback" not in log and "OverflowError" not in log, node.log_tail()
            assert not any(f"declaring {peer} dead" in log for peer in peers), node.log_tail()
