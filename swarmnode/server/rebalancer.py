"""Rebalancing on churn: a node placed by the swarm (`--blocks auto` or a count) moves its span where it is needed.

The decision is :func:`swarmnode.server.block_selection.plan_move` (pure). This module runs it
periodically and when the swarm's membership changes, and carries a move out without a gap
and without failing a session:

1. load the blocks of the new span that the node does not hold (off the compute thread, while
   it keeps serving), then check the decision again on a fresh snapshot: a node that moved
   meanwhile may have made the move pointless or gap-opening — then the new blocks are dropped;
2. announce the new span: new sessions come for it; sessions on the old blocks are told
   ``draining`` with every step and move on their next one, as with a node that leaves;
3. once they are gone (or after ``drain_timeout``), free the old blocks.

Memory: during the move the node holds both spans' blocks (the KV budget is unchanged: the
span keeps its length), so a move happens only if the host has that much free memory.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from typing import TYPE_CHECKING

from swarmnode.models import block_bytes, load_blocks
from swarmnode.net.dht import fetch_snapshot
from swarmnode.records import NodeState, SwarmSnapshot
from swarmnode.server.block_selection import Move, plan_move
from swarmnode.server.host_memory import detect_memory
from swarmnode.server.threads import run_in_passing_thread

if TYPE_CHECKING:
    from swarmnode.server.node import Node

logger = logging.getLogger(__name__)


def membership_of(snapshot: SwarmSnapshot) -> frozenset:
    """What counts as a membership change: which nodes serve, in what state, which spans."""
    return frozenset((r.peer_id, r.state, r.start, r.end) for r in snapshot.live())


class Rebalancer:
    """Reconsiders one node's span (see module docstring); ``run()`` until cancelled."""

    def __init__(self, node: Node, period: float, margin: float, drain_timeout: float = 10.0):
        self.node, self.period, self.margin, self.drain_timeout = node, period, margin, drain_timeout
        self.rng = random.Random()

    async def run(self) -> None:
        """Every gossip period, look at the gossip view; every announce period (sooner if the view
        changed), read the swarm; decide when its membership changed or ``period`` passed."""
        node = self.node
        tick = min(node.config.gossip_period, node.config.announce_period)
        last_view, last_members, last_decision, next_read = None, None, time.monotonic(), 0.0
        while True:
            await asyncio.sleep(tick * self.rng.uniform(0.8, 1.2))
            view = node.gossip.view() if node.gossip is not None else {}
            now = time.monotonic()
            if view == last_view and now < next_read:
                continue
            last_view, next_read = view, now + node.config.announce_period * self.rng.uniform(0.8, 1.2)
            snapshot = await self._snapshot_or_none()
            if snapshot is None:
                continue
            members = membership_of(snapshot)
            if members == last_members and now - last_decision < self.period:
                continue
            changed = last_members is not None and members != last_members
            last_members, last_decision = members, now
            if changed:  # others saw the same change: do not all decide on the same instant
                await asyncio.sleep(self.rng.uniform(0, node.config.announce_period / 2))
                snapshot = await self._snapshot_or_none()
                if snapshot is None:
                    continue
                last_members = membership_of(snapshot)
            move = self.decide(snapshot)
            if move is None:
                continue
            try:
                await self.move(move)
            except Exception:  # noqa: BLE001 - a failed move leaves the node serving its old span
                logger.exception("rebalancing: moving to %d:%d failed; staying at %d:%d", *move.new, *move.old)
                await node.scheduler.call(lambda: node.backend.drop_blocks_outside(node.start, node.end))

    async def _snapshot(self) -> SwarmSnapshot:
        node = self.node
        return await fetch_snapshot(node.dht, node.model_record.model_id, node.spec.num_blocks, node.identity.swarm_key)

    async def _snapshot_or_none(self) -> SwarmSnapshot | None:
        """The swarm now, or None after a DHT hiccup (logged; the loop tries again next time)."""
        try:
            return await self._snapshot()
        except Exception as e:  # noqa: BLE001 - any failure to read the DHT
            logger.debug("rebalancing: reading the swarm failed: %s", e)
            return None

    def decide(self, snapshot: SwarmSnapshot) -> Move | None:
        node = self.node
        return plan_move(snapshot, node.peer_id, (node.start, node.end), node.advertised_rps(), self.margin)

    async def move(self, move: Move) -> bool:
        """Carry ``move`` out (module docstring); False if it was called off."""
        node, began = self.node, time.monotonic()
        new_start, new_end = move.new
        missing = [i for i in range(new_start, new_end) if i not in node.backend.held]
        need = len(missing) * block_bytes(node.spec, node.dtype, node.config.quant)
        free = detect_memory(node.config.device)
        if need > free:
            logger.warning("rebalancing: moving to %d:%d needs %d MiB more, %d MiB free: staying", *move.new,
                           need >> 20, free >> 20)  # fmt: skip
            return False
        logger.info(
            "rebalancing: moving %d:%d -> %d:%d (weakest block %.1f -> %.1f tokens/s)",
            *move.old,
            *move.new,
            move.weakest_before,
            move.weakest_after,
        )
        loaded = await run_in_passing_thread(  # not a pool thread: it would keep an OpenMP team (server/threads.py)
            lambda: load_blocks(
                node.spec, min(missing), max(missing) + 1, node.config.device, node.dtype,
                quant=node.config.quant, layout=node.weight_layout,
            ),
            node.threads,
        )  # fmt: skip
        await node.scheduler.call(lambda: node.backend.add_blocks(loaded))
        loaded_s = time.monotonic() - began
        again = self.decide(await self._snapshot())
        if again is None or again.new != move.new:
            logger.info("rebalancing: the swarm changed while loading; staying at %d:%d", *move.old)
            node.metrics.span_moves.labels("called_off").inc()
            await node.scheduler.call(lambda: node.backend.drop_blocks_outside(*move.old))
            gc.collect()
            return False
        await node.scheduler.call(lambda: node.backend.announce_span(new_start, new_end))
        node.adopt_span(new_start, new_end)
        if node.state == NodeState.ONLINE:
            await node.announcer.announce()
        announced_s = time.monotonic() - began
        deadline = time.monotonic() + self.drain_timeout
        while node.handler.sessions_outside(new_start, new_end) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = node.handler.sessions_outside(new_start, new_end)
        freed = await node.scheduler.call(lambda: node.backend.drop_blocks_outside(new_start, new_end))
        gc.collect()
        seconds = time.monotonic() - began
        event = {
            "from": list(move.old),
            "to": list(move.new),
            "loaded_s": round(loaded_s, 3),
            "announced_s": round(announced_s, 3),
            "done_s": round(seconds, 3),
            "freed_blocks": freed,
            "sessions_cut": left,
        }
        node.metrics.span_moves.labels("moved").inc()
        logger.info("rebalancing: moved %s", event)
        if node.on_move is not None:
            node.on_move(move.old, move.new, seconds)
        return True
