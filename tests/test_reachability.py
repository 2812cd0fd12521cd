"""Dial-back (net/reachability.py): the decision, the parsing, and two real peers on loopback."""

import asyncio
import socket

import pytest
from hivemind.p2p import P2P

from swarmnode.net.dht import relay_of
from swarmnode.net.reachability import (
    DialBack,
    ask_dial_back,
    decide_reachable,
    listening_ports,
    observed_ip,
    serve_dial_back,
)


def test_the_majority_of_helpers_that_answered_decides():
    yes, no = DialBack("a", "1.2.3.4", (4001,)), DialBack("b", "1.2.3.4", ())
    assert decide_reachable([]) is None and decide_reachable([None, None]) is None  # nobody answered: unknown
    assert decide_reachable([yes]) is True and decide_reachable([no]) is False
    assert decide_reachable([yes, no, no]) is False and decide_reachable([yes, yes, no, None]) is True


def test_ports_and_addresses_are_read_from_multiaddrs():
    maddrs = ["/ip4/127.0.0.1/tcp/4001/p2p/QmA", "/ip4/10.0.0.5/tcp/4001/p2p/QmA", "/ip6/::1/tcp/4002/p2p/QmA",
              "/ip4/5.6.7.8/tcp/31337/p2p/QmRelay/p2p-circuit/p2p/QmA", "/ip4/1.2.3.4/udp/9/quic"]  # fmt: skip
    assert listening_ports(maddrs) == [4001, 4002]  # not the relay's port
    assert observed_ip("/ip4/10.0.0.5/tcp/51000") == "10.0.0.5" and observed_ip("/ip6/::1/tcp/1") == "::1"
    assert observed_ip("/ip4/5.6.7.8/tcp/31337/p2p/QmRelay/p2p-circuit") is None
    assert relay_of(maddrs) == "QmRelay" and relay_of(maddrs[:2]) == ""


def test_a_helper_dials_back_the_address_it_sees_and_only_that():
    async def main():
        helper = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        asker = await P2P.create(initial_peers=await helper.get_visible_maddrs(), host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            await serve_dial_back(helper)
            listening = listening_ports([str(m) for m in await asker.get_visible_maddrs()])
            with socket.socket() as closed:  # a port nobody listens on (bound, never listening)
                closed.bind(("127.0.0.1", 0))
                answer = await ask_dial_back(asker, str(helper.peer_id), [*listening, closed.getsockname()[1]])
            bad = await ask_dial_back(asker, str(helper.peer_id), [0, 70000])  # refused with a reason: None
            return listening, answer, bad
        finally:
            await asker.shutdown()
            await helper.shutdown()

    listening, answer, bad = asyncio.run(main())
    assert answer is not None and answer.observed == "127.0.0.1"
    assert answer.reachable == tuple(listening) and len(listening) == 1
    assert bad is None


@pytest.mark.parametrize("mode", ["direct", "relay", "auto"])
def test_the_reachability_setting_is_checked(mode):
    from swarmnode.config import NodeConfig
    from swarmnode.errors import ConfigError

    assert NodeConfig(reachability=mode).reachability == mode
    with pytest.raises(ConfigError):
        NodeConfig(reachability="nat")
