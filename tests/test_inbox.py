"""The forwarding inbox, in-process: a pushed input meets the step waiting for it, whichever
comes first, and only from the peers that step names."""

import asyncio

import pytest
import torch

from swarmnode.server.inbox import Inbox


def test_a_push_meets_its_step_whichever_comes_first():
    async def main():
        inbox, x, y = Inbox(), torch.ones(1, 1, 4), torch.zeros(1, 1, 4)
        inbox.deliver("up", "s", 1, x)  # early
        assert torch.equal(await inbox.wait("s", 1, frozenset({"up", "client"}), 1.0), x)
        waiting = asyncio.ensure_future(inbox.wait("s", 2, frozenset({"up", "client"}), 1.0))
        await asyncio.sleep(0)
        inbox.deliver("client", "s", 2, y)  # late, from the session's own client
        assert torch.equal(await waiting, y)

    asyncio.run(main())


def test_only_the_named_peers_can_feed_a_session():
    async def main():
        inbox, x = Inbox(), torch.ones(1, 1, 4)
        inbox.deliver("stranger", "s", 1, torch.full((1, 1, 4), 9.0))  # early, from the wrong peer
        waiting = asyncio.ensure_future(inbox.wait("s", 1, frozenset({"up"}), 0.5))
        await asyncio.sleep(0)
        inbox.deliver("stranger", "s", 1, torch.full((1, 1, 4), 7.0))  # while waiting: dropped
        inbox.deliver("up", "s", 1, x)
        assert torch.equal(await waiting, x)
        with pytest.raises(TimeoutError):  # nothing from the named peer: the step gives up
            await inbox.wait("s", 2, frozenset({"up"}), 0.05)

    asyncio.run(main())


def test_early_pushes_are_bounded():
    inbox = Inbox(max_early=3)
    for step in range(10):
        inbox.deliver("up", "s", step, torch.ones(1))
    assert len(inbox._early) == 3 and ("s", 9, "up") in inbox._early and ("s", 0, "up") not in inbox._early
