"""A node behind a real NAT (network namespaces, nftables masquerade): it finds out that nobody
can dial it back, serves through a relay (an initial peer), and a client in another namespace,
with no route to it, generates through it token for token as local generation does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmnode.launcher import LocalSwarm
from tests.netns_lab import ADDR, NatLab

pytestmark = pytest.mark.swarm
RELAY_PORT = 31400
NEW_TOKENS = 16


def test_a_node_behind_a_nat_serves_through_a_relay(tmp_path, llama_path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(llama_path).generate(
        torch.tensor([[11, 22, 33, 44, 55, 66]]), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    with NatLab() as lab, LocalSwarm(tmp_path) as swarm:
        relay_maddr = swarm.start_bootstrap(extra=("--host-maddrs", f"/ip4/0.0.0.0/tcp/{RELAY_PORT}"),
                                            netns=lab.ns["relay"])  # fmt: skip
        relay_id = relay_maddr.rsplit("/p2p/", 1)[1]
        seen_from = {  # the relay peer's address as each side reaches it
            role: f"/ip4/{ADDR[f'relay_to_{role}']}/tcp/{RELAY_PORT}/p2p/{relay_id}" for role in ("client", "nat")
        }
        anywhere = ("--host-maddrs", "/ip4/0.0.0.0/tcp/0")
        direct = swarm.start_node(llama_path, "0:4", *anywhere, "--initial-peers",
                                  f"/ip4/127.0.0.1/tcp/{RELAY_PORT}/p2p/{relay_id}", netns=lab.ns["relay"])  # fmt: skip
        behind = swarm.start_node(llama_path, "4:8", *anywhere, "--initial-peers", seen_from["nat"],
                                  netns=lab.ns["node"], timeout=180)  # fmt: skip
        assert "relay" not in direct.info  # the relay dialled it back
        assert behind.info.get("relay") == relay_id, behind.info  # nobody could: it found out and took the relay
        log = behind.log_path.read_text()
        assert "no peer could dial this node back" in log

        unreachable = subprocess.run(["ip", "-n", lab.ns["client"], "route", "get", ADDR["node"]],
                                     capture_output=True, text=True)  # fmt: skip
        assert unreachable.returncode != 0  # the client has no route to the node at all
        client = lab.run("client", sys.executable, str(Path(__file__).with_name("relay_client.py")), llama_path,
                         str(NEW_TOKENS), seen_from["client"], timeout=300)  # fmt: skip
        result = json.loads(client.stdout.strip().splitlines()[-1])
        assert torch.equal(torch.tensor(result["tokens"]), reference)
        peers = {peer for peer, _, _ in result["chain"]}
        assert behind.info["peer_id"] in peers and direct.info["peer_id"] in peers, result["chain"]
        assert result["relays"][behind.info["peer_id"]] == relay_id  # announced, so routers know
        assert result["relays"][direct.info["peer_id"]] == ""
        print(f"\nround trips from the client: {result['pings']} (the relayed node is {behind.info['peer_id']})")
