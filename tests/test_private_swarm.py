"""Private swarms with real processes: members holding the swarm key work as usual; a peer
without it (or with another key) cannot see the swarm, cannot call its nodes, and cannot
announce itself into it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hivemind.proto import runtime_pb2

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig
from swarmnode.errors import Unauthorized
from swarmnode.launcher import LocalSwarm
from swarmnode.net.protocol import make_request, read_response
from swarmnode.net.stream import NodeStream
from tests.conftest import swarm_client

pytestmark = pytest.mark.swarm


def keygen(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmnode.cli", "keygen", str(path)], capture_output=True, text=True)


def status(peers, *extra) -> dict:
    import json

    out = subprocess.run([sys.executable, "-m", "swarmnode.cli", "status", "--initial-peers", *peers, "--json", *extra],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_keygen_writes_a_private_file_and_never_overwrites(tmp_path):
    path = tmp_path / "swarm.key"
    assert keygen(path).returncode == 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    key_line = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert len(key_line) == 1 and len(bytes.fromhex(key_line[0])) == 32
    again = keygen(path)
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_only_key_holders_see_call_and_join_a_private_swarm(tmp_path, llama_path, llama_reference):
    key, other_key = tmp_path / "swarm.key", tmp_path / "other.key"
    assert keygen(key).returncode == 0 and keygen(other_key).returncode == 0
    member = ("--swarm-key", str(key))
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_bootstrap(extra=member)
        nodes = [swarm.start_node(llama_path, span, *member, wait=False) for span in ("0:4", "4:8")]
        for node in nodes:
            swarm.wait_online(node)
        members = {n.info["peer_id"] for n in nodes}
        intruder = swarm.start_node(llama_path, "0:8", name="intruder")  # no key: it announces in vain

        prompt = torch.tensor([[3, 1, 4, 1, 5]])
        with swarm_client(swarm, llama_path, swarm_key_path=str(key)) as model:
            out = model.generate(prompt, max_new_tokens=8)
            snapshot = model.connection.run(model.connection.snapshot(nodes[0].info["model"], 8, max_age=0))
        assert torch.equal(out, llama_reference.generate(prompt, max_new_tokens=8, do_sample=False))
        assert set(snapshot.nodes) == members  # the intruder's records never got in

        (report,) = status(swarm.initial_peers, "--swarm-key", str(key))["models"]
        assert {n["peer_id"] for n in report["nodes"]} == members
        for outsider in ((), ("--swarm-key", str(other_key))):
            seen = {n["peer_id"] for m in status(swarm.initial_peers, *outsider)["models"] for n in m.get("nodes", ())}
            assert not seen & members  # without the key no member can be read (only the intruder's own records)

        peer = nodes[0].info["peer_id"]
        stranger = SwarmConnection(ClientConfig(initial_peers=tuple(swarm.initial_peers)))
        try:
            info = stranger.run(stranger.stub(peer).rpc_info(runtime_pb2.ExpertUID(), timeout=10))
            with pytest.raises(Unauthorized):
                read_response(info, peer)

            async def open_session():
                stream = await NodeStream.open(stranger.p2p, peer)
                request = {"session_id": "s", "start": 0, "end": 4, "max_length": 8, "position": 0}
                await stream.send(make_request(request, (torch.zeros(1, 1, 64),)))
                try:
                    return read_response(await stream.recv(), peer)
                finally:
                    await stream.close()

            with pytest.raises(Unauthorized):
                stranger.run(open_session(), timeout=30)
            forward = make_request({"start": 0, "end": 4}, (torch.zeros(1, 1, 64),))
            with pytest.raises(Unauthorized):
                read_response(stranger.run(stranger.stub(peer).rpc_forward(forward, timeout=10)), peer)
        finally:
            stranger.close()
        assert intruder.alive() and all(n.alive() for n in nodes)
