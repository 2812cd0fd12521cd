"""Announcing a node's NodeRecord (and its model's ModelRecord) in the DHT.

Records are re-announced every ``period`` seconds with an expiry of twice that, so a
node that vanishes drops out of the DHT within ``2 × period``; a graceful leave
writes OFFLINE at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import hivemind
from hivemind.utils import get_dht_time

from swarmnode.net.dht import store_records
from swarmnode.net.identity import Identity
from swarmnode.records import MODELS_KEY, ModelRecord, NodeRecord, NodeState, servers_key

logger = logging.getLogger(__name__)


class Announcer:
    """Keeps a node's record fresh in the DHT; ``record_fn`` gives the current record."""

    def __init__(
        self,
        dht: hivemind.DHT,
        identity: Identity,
        model: ModelRecord,
        record_fn: Callable[[], NodeRecord],
        period: float,
        on_failure: Callable[[], None] | None = None,
    ):
        self.dht, self.identity, self.model, self.record_fn, self.period = dht, identity, model, record_fn, period
        self.on_failure = on_failure or (lambda: None)  # a metric: an announcement failed
        self._task: asyncio.Task | None = None

    async def announce(self, state: NodeState | None = None) -> bool:
        """Store the current record now (with ``state`` overriding the record's)."""
        record = self.record_fn()
        if state is not None:
            record = dataclasses.replace(record, state=state)
        record = dataclasses.replace(record, timestamp=get_dht_time())
        items = [(servers_key(self.model.model_id), record.peer_id, record.to_wire())]
        if record.state != NodeState.OFFLINE:
            items.append((MODELS_KEY, self.model.model_id, self.model.to_wire()))
        try:
            stored = await store_records(self.dht, self.identity, items, ttl=2 * self.period)
        except Exception as e:  # noqa: BLE001 - a failed announce is retried next period
            logger.warning("announce failed: %s", e)
            stored = False
        if not stored:
            self.on_failure()
        return stored

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self.announce()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
