"""Round trips to nodes, measured by the client itself.

Routers weigh network delay, and a node's own reports cannot be trusted for it (a node that
claims a small compute time would otherwise look near: docs/security.md). So the client
pings the nodes it may route through, as Petals' client does with its candidate servers: an
``rpc_info`` call each (the cheapest call every node answers, authenticated in a private
swarm), timed on the client's clock, refreshed every ``ping_period`` seconds. Each measurement
is the fastest of ``PINGS_PER_MEASUREMENT`` pings in a row (a round trip can only be inflated by
a busy host, never shortened, so the minimum is the distance), smoothed across measurements. A
node that does not answer within ``ping_timeout`` counts as that far away (routable, last) until
a later ping says otherwise. The measured round trips land in the router's ``pings`` map.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, MutableMapping

from hivemind.proto import runtime_pb2

from swarmnode.net.protocol import read_response
from swarmnode.routing.stigmergy import ewma

logger = logging.getLogger(__name__)
SMOOTHING = 0.5  # weight of a new measurement against the running value
PINGS_PER_MEASUREMENT = 3


class Pinger:
    """Keeps ``pings`` (peer id → seconds) fresh for the peers a client may route through."""

    def __init__(self, connection, pings: MutableMapping[str, float], period: float, timeout: float):
        self.connection, self.pings = connection, pings
        self.period, self.timeout = period, timeout
        self._pinged_at: dict[str, float] = {}
        self._in_flight: set[str] = set()

    def due(self, peers: Iterable[str]) -> list[str]:
        """Peers never pinged, or last pinged over a period ago (and not being pinged now)."""
        if self.period <= 0:
            return []
        now = time.monotonic()
        return [
            p for p in peers if p not in self._in_flight and now - self._pinged_at.get(p, float("-inf")) >= self.period
        ]

    async def refresh(self, peers: Iterable[str]) -> None:
        """Ping every due peer at once. Waits only for peers never measured (a first route
        should already see distances); refreshes of known peers run in the background."""
        due = self.due(peers)
        if not due:
            return
        unknown = [p for p in due if p not in self.pings]
        known = [p for p in due if p in self.pings]
        self._in_flight.update(due)
        if known:
            self.connection.background(lambda: self._ping_all(known), "pinging nodes")
        if unknown:
            await self._ping_all(unknown)

    async def alive(self, peer_id: str, timeout: float) -> bool:
        """Whether ``peer_id`` answers one ``rpc_info`` within ``timeout`` seconds. A node's event
        loop never computes (its step scheduler does), so a busy node answers at once and a
        dead or hung one does not: this tells "slow" from "gone" when a step is late."""
        try:
            await self.connection.stub(peer_id).rpc_info(self._info_request(), timeout=timeout)
            return True  # any answer, even an error, comes from a live node
        except Exception as e:  # noqa: BLE001 - no answer, or a broken connection: not alive
            logger.debug("liveness probe of %s failed: %s", peer_id, e)
            return False

    async def _ping_all(self, peers: list[str]) -> None:
        await asyncio.gather(*(self._ping(p) for p in peers))

    def _info_request(self) -> runtime_pb2.ExpertUID:
        """An ``rpc_info`` request (with our call token in a private swarm: it rides in the uid)."""
        token = self.connection.identity.call_token()
        return runtime_pb2.ExpertUID(uid=token.hex() if token is not None else "")

    async def _ping(self, peer_id: str) -> None:
        request = self._info_request()
        seconds = self.timeout
        try:
            for _ in range(PINGS_PER_MEASUREMENT):
                began = time.perf_counter()
                response = await self.connection.stub(peer_id).rpc_info(request, timeout=self.timeout)
                read_response(response, peer_id)
                seconds = min(seconds, time.perf_counter() - began)
        except Exception as e:  # noqa: BLE001 - any failure: the node is, for routing, far away
            logger.debug("ping of %s failed: %s", peer_id, e)
            seconds = self.timeout
        finally:
            self._in_flight.discard(peer_id)
            self._pinged_at[peer_id] = time.monotonic()
        self.pings[peer_id] = ewma(self.pings.get(peer_id), seconds, SMOOTHING)
