"""A client's connection to the swarm: a client-mode DHT peer, its P2P replica and an
event loop on a background thread, so the public API can stay synchronous."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import uvloop
from hivemind.p2p import PeerID

from swarmnode.config import ClientConfig
from swarmnode.errors import ConfigError, SwarmUnavailable
from swarmnode.net.dht import fetch_models, fetch_snapshot, start_dht
from swarmnode.net.lifeline import start_lifeline, stop_lifeline
from swarmnode.net.protocol import SwarmNodeService
from swarmnode.net.swarmkey import load_swarm_key
from swarmnode.records import ModelRecord, SwarmSnapshot

T = TypeVar("T")
logger = logging.getLogger(__name__)
STALE_LIMIT = 5.0  # refresh periods a snapshot may be served while it is re-read in the background


class SwarmConnection:
    """Owns the DHT peer, the P2P replica and the event-loop thread of one client."""

    def __init__(self, config: ClientConfig):
        if not config.initial_peers:
            raise ConfigError("initial_peers is empty: pass the multiaddr of at least one swarm peer")
        self.config = config
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="swarmnode-client-loop", daemon=True)
        self._thread.start()
        self._lifeline = None
        self.dht = None
        try:
            self.dht, self.identity = start_dht(
                config.initial_peers,
                host_maddrs=("/ip4/127.0.0.1/tcp/0",),
                client_mode=True,
                identity_path=config.identity_path,
                swarm_key=load_swarm_key(config.swarm_key_path),
            )
            self._lifeline = start_lifeline([self.dht.pid])
            self.p2p = self.run(self.dht.replicate_p2p())
        except BaseException:
            self.close()
            raise
        self._snapshots: dict[str, tuple[float, SwarmSnapshot]] = {}
        self._refreshing: dict[str, asyncio.Task] = {}  # model id → its background re-read
        self._background: set[asyncio.Task] = set()  # fire-and-forget work (publishing observations)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the client loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stub(self, peer_id: str):
        return SwarmNodeService.get_stub(self.p2p, PeerID.from_base58(peer_id))

    async def snapshot(self, model_id: str, num_blocks: int, max_age: float | None = None) -> SwarmSnapshot:
        """The swarm as seen at most ``max_age`` seconds ago (default: the refresh period).

        Stale-while-revalidate: a snapshot older than ``max_age`` (but younger than
        ``STALE_LIMIT`` refresh periods) is returned at once while a background task re-reads
        the DHT, so opening a session never waits for the DHT once the swarm has been seen.
        ``max_age=0`` always reads the DHT now.
        """
        max_age = self.config.swarm_refresh_period if max_age is None else max_age
        cached = self._snapshots.get(model_id)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if age <= max_age:
                return cached[1]
            if max_age > 0 and age <= STALE_LIMIT * self.config.swarm_refresh_period:
                self._refresh_in_background(model_id, num_blocks)
                return cached[1]
        return await self._fetch_snapshot(model_id, num_blocks)

    async def _fetch_snapshot(self, model_id: str, num_blocks: int) -> SwarmSnapshot:
        try:
            snapshot = await fetch_snapshot(self.dht, model_id, num_blocks, self.identity.swarm_key)
        except Exception as e:  # noqa: BLE001 - any DHT failure means we cannot see the swarm
            raise SwarmUnavailable(f"cannot read the swarm's records: {e}") from e
        self._snapshots[model_id] = (time.monotonic(), snapshot)
        return snapshot

    def _refresh_in_background(self, model_id: str, num_blocks: int) -> None:
        if model_id in self._refreshing:
            return
        task = asyncio.create_task(self._fetch_snapshot(model_id, num_blocks))
        self._refreshing[model_id] = task
        task.add_done_callback(lambda done: self._refresh_done(model_id, done))

    def _refresh_done(self, model_id: str, task: asyncio.Task) -> None:
        self._refreshing.pop(model_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("background refresh of %s failed: %s", model_id, task.exception())

    def background(self, work: Awaitable[Any], what: str) -> None:
        """Run ``work`` on the client loop without waiting for it (best effort; failures are logged)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(finished: asyncio.Task) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.debug("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)

    async def models(self) -> dict[str, ModelRecord]:
        return await fetch_models(self.dht, self.identity.swarm_key)

    def close(self) -> None:
        if self.loop.is_running():
            for task in [*self._refreshing.values(), *self._background]:
                self.loop.call_soon_threadsafe(task.cancel)
        if self.dht is not None:
            p2p = getattr(self.dht, "_p2p_replica", None)
            if p2p is not None and self.loop.is_running():
                try:
                    self.run(p2p.shutdown(), timeout=5)
                except Exception:  # noqa: BLE001 - best effort while closing
                    pass
            self.dht.shutdown()
            self.dht = None
        stop_lifeline(self._lifeline)
        self._lifeline = None
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
