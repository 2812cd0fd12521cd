"""Forwarded inputs meeting the session steps that wait for them (node-to-node forwarding).

A forwarded step reaches a node twice: the client's *await* request on the session's own
stream ("step k's input comes from peer P") and the previous hop's *push* of the input
(``net/push.py``). Either may come first. :class:`Inbox` matches them by (session id, step)
and accepts a push only from the peers the await names — the previous hop, or the session's
own client (its fallback when the previous hop could not push) — so no other peer can feed a
session. Early pushes wait, bounded in number and age.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import torch

MAX_EARLY = 256  # pushes held before their await arrives, node-wide
EARLY_TTL_S = 60.0


class Inbox:
    """Pushed inputs by (session id, step, sender), and the steps waiting for them."""

    def __init__(self, max_early: int = MAX_EARLY, ttl_s: float = EARLY_TTL_S):
        self.max_early, self.ttl_s = max_early, ttl_s
        self._early: OrderedDict[tuple[str, int, str], tuple[torch.Tensor, float]] = OrderedDict()
        self._waiting: dict[tuple[str, int], tuple[frozenset[str], asyncio.Future]] = {}

    def deliver(self, sender: str, session_id: str, step: int, hidden: torch.Tensor) -> None:
        """A push arrived from ``sender``: hand it to the step waiting for it, or keep it."""
        waiting = self._waiting.get((session_id, step))
        if waiting is not None:
            allowed, future = waiting
            if sender in allowed and not future.done():
                future.set_result(hidden)
            return  # from a peer the session does not take input from: dropped
        self._prune()
        while len(self._early) >= self.max_early:
            self._early.popitem(last=False)
        self._early[(session_id, step, sender)] = (hidden, time.monotonic())

    async def wait(self, session_id: str, step: int, allowed: frozenset[str], timeout: float) -> torch.Tensor:
        """The input of ``step`` of ``session_id``, pushed by one of ``allowed``; TimeoutError if
        none arrives within ``timeout`` seconds."""
        for sender in allowed:
            early = self._early.pop((session_id, step, sender), None)
            if early is not None:
                return early[0]
        future = asyncio.get_running_loop().create_future()
        self._waiting[(session_id, step)] = (allowed, future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop((session_id, step), None)

    def _prune(self) -> None:
        oldest = time.monotonic() - self.ttl_s
        while self._early and next(iter(self._early.values()))[1] < oldest:
            self._early.popitem(last=False)
