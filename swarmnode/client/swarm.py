"""A client's connection to the swarm: a client-mode DHT peer, its P2P replica and an
event loop on a background thread, so the public API can stay synchronous."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop
from hivemind.p2p import PeerID

from swarmnode.client.background import BackgroundWork
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
        self._refreshing: set[str] = set()  # model ids whose re-read is waiting or running
        # Fire-and-forget work (re-reads, pings, publishing observations), kept off prompt steps.
        self.work = BackgroundWork()
        self._used: dict[str, tuple[float, int]] = {}  # model id → (last asked for, its block count)
        self._keeper: asyncio.Task | None = None  # keeps the views of models in use fresh

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the client loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stub(self, peer_id: str):
        return SwarmNodeService.get_stub(self.p2p, PeerID.from_base58(peer_id))

    async def snapshot(self, model_id: str, num_blocks: int, max_age: float | None = None) -> SwarmSnapshot:
        """The swarm as seen at most ``max_age`` seconds ago (default: the refresh period).

        Stale-while-revalidate: a snapshot older than ``max_age`` (but younger than
        ``STALE_LIMIT`` refresh periods) is returned at once while a background task re-reads
        the DHT, so opening a session never waits for the DHT once the swarm has been seen; and
        while the model is in use, the keeper (:meth:`_keep_fresh`) re-reads it before it gets
        that old. ``max_age=0`` always reads the DHT now.
        """
        max_age = self.config.swarm_refresh_period if max_age is None else max_age
        if max_age > 0:  # a caller that always reads anew (status, the monitor) gains nothing from the keeper
            self._note_use(model_id, num_blocks)
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

    def view_age(self, model_id: str) -> float | None:
        """Seconds since this client last read ``model_id``'s records from the DHT (None: never)."""
        fetched_at = self._fetched_at(model_id)
        return None if fetched_at is None else time.monotonic() - fetched_at

    def _fetched_at(self, model_id: str) -> float | None:
        cached = self._snapshots.get(model_id)
        return None if cached is None else cached[0]

    def _note_use(self, model_id: str, num_blocks: int) -> None:
        self._used[model_id] = (time.monotonic(), num_blocks)
        if self._keeper is None and self.config.keep_fresh_for > 0:
            self._keeper = asyncio.create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        """Re-read the views of models in use before they expire (see :func:`keeper_action`),
        so that a session opened after a pause still finds its route cached. One DHT read per
        model every few refresh periods while it is in use; nothing once it is not."""
        period = self.config.swarm_refresh_period
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for model_id, (used_at, num_blocks) in list(self._used.items()):
                action = keeper_action(now, used_at, self._fetched_at(model_id), period, self.config.keep_fresh_for)
                if action == "forget":
                    del self._used[model_id]
                elif action == "refresh":
                    self._refresh_in_background(model_id, num_blocks)

    def _refresh_in_background(self, model_id: str, num_blocks: int) -> None:
        if model_id in self._refreshing:
            return
        self._refreshing.add(model_id)

        async def refresh() -> None:
            try:
                await self._fetch_snapshot(model_id, num_blocks)
            finally:
                self._refreshing.discard(model_id)

        self.work.start(refresh, f"background refresh of {model_id}")

    def background(self, work: Callable[[], Awaitable[Any]], what: str) -> None:
        """Run ``work()`` on the client loop without waiting for it (best effort; failures are
        logged), held back while a session's prompt step is in flight (see client/background.py)."""
        self.work.start(work, what)

    async def models(self) -> dict[str, ModelRecord]:
        return await fetch_models(self.dht, self.identity.swarm_key)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.work.cancel_all)
            if self._keeper is not None:
                self.loop.call_soon_threadsafe(self._keeper.cancel)
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


def keeper_action(now: float, used_at: float, fetched_at: float | None, period: float, keep_for: float) -> str:
    """What the client does, at ``now``, about one model's cached view of the swarm, looking
    again every ``period`` seconds: ``"forget"`` it (nobody asked for it in ``keep_for``
    seconds), ``"refresh"`` it (missing, or two looks from being too old to serve, at
    ``STALE_LIMIT`` periods: the DHT read then has a whole period to finish before the view
    would expire), or ``"wait"``."""
    if now - used_at > keep_for:
        return "forget"
    if fetched_at is None or now - fetched_at >= (STALE_LIMIT - 2) * period:
        return "refresh"
    return "wait"
