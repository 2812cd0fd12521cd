"""Pushes: hidden states sent straight to the node that needs them next (node-to-node forwarding).

With forwarding, a hop sends its output directly to the next hop of the chain instead of back
to the client, so a token costs N+1 network traversals instead of 2N. A push is one framed
``ExpertRequest`` on a raw stream under :data:`PUSH_HANDLE` — metadata ``{"session_id",
"step"}`` and the hidden states — and gets no answer: the receiving node delivers it to the
session waiting for that step (see ``server/inbox.py``), which answers its own client. Each
sender keeps one push stream per peer and reuses it (:class:`Pusher`); a push that cannot be
sent is reported to the caller, who falls back to relaying through the client.
"""

from __future__ import annotations

import asyncio
import logging

import torch
from hivemind.p2p import P2P

from swarmnode.errors import NodeUnavailable
from swarmnode.net.protocol import make_request
from swarmnode.net.stream import NodeStream

logger = logging.getLogger(__name__)
PUSH_HANDLE = "SwarmNodeService.rpc_push"


class Pusher:
    """Outgoing push streams, one per peer, opened on first use."""

    def __init__(self, p2p: P2P, delay_s: float = 0.0):
        self.p2p = p2p
        self.delay_s = delay_s  # TESTING AID (--debug-network-delay-ms): every push is held this long
        self._streams: dict[str, NodeStream] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def push(self, peer_id: str, meta: dict, hidden: torch.Tensor) -> bool:
        """Send ``hidden`` to ``peer_id`` for the session step named in ``meta``; False if it could
        not be sent (the caller relays instead)."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        lock = self._locks.setdefault(peer_id, asyncio.Lock())
        async with lock:  # one frame at a time per stream
            try:
                stream = self._streams.get(peer_id)
                if stream is None or stream.closed:
                    stream = self._streams[peer_id] = await NodeStream.open(self.p2p, peer_id, PUSH_HANDLE)
                await stream.send(make_request(meta, (hidden,)))
                return True
            except NodeUnavailable as e:
                logger.info("push to %s failed: %s", peer_id, e)
                self._streams.pop(peer_id, None)
                return False

    async def close(self) -> None:
        for stream in list(self._streams.values()):
            await stream.close()
        self._streams.clear()
