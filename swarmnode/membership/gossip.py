"""The SWIM failure detector running among a model's nodes.

Every protocol period a node probes one member (round-robin over a shuffled list): a
direct ``rpc_ping``; if it gets no answer within ``ping_timeout``, ``indirect_k`` other
members are asked to ping it (``rpc_ping_req``); no answer at all makes the member
SUSPECT. Membership updates ride on every ping and answer. Suspicions time out into DEAD
verdicts (see :mod:`swarmnode.membership.swim`), which are also written to the DHT under
``{model}.dead`` with a short expiry, so clients drop the node within seconds instead of
waiting for its record to expire. Members are seeded from the DHT records.

This never relies on a connection error alone: a hung node (SIGSTOP) keeps its
connections open and is caught by the ping timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import hivemind
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.proto import runtime_pb2

from swarmnode.errors import RemoteError
from swarmnode.membership.ratelimit import RateLimiter
from swarmnode.membership.swim import Membership, Status, Update
from swarmnode.net.dht import fetch_snapshot, store_records
from swarmnode.net.identity import Identity
from swarmnode.net.protocol import GossipService, make_request, make_response, read_response, unpack_meta
from swarmnode.net.shutdown import bounded
from swarmnode.records import DeadVerdict, NodeState, dead_key, verdict_subkey

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GossipConfig:
    """Timing of the failure detector; defaults detect a dead node in about 3-4 s."""

    period: float = 1.0  # seconds between probes
    ping_timeout: float = 0.4  # direct ping
    indirect_k: int = 3  # members asked to ping on our behalf
    suspicion_timeout: float = 1.5  # SUSPECT → DEAD
    seed_period: float = 2.0  # seconds between re-reads of the DHT records
    verdict_ttl: float = 60.0  # seconds a dead verdict stays in the DHT
    max_messages_per_s: float = 20.0  # per sender; beyond it a message's updates are ignored


class SwimGossip:
    """Runs the failure detector for one node (an async component: start / stop)."""

    def __init__(
        self,
        p2p: P2P,
        dht: hivemind.DHT,
        identity: Identity,
        model_id: str,
        num_blocks: int,
        incarnation: int,
        config: GossipConfig = GossipConfig(),
        rng: random.Random | None = None,
        on_refute: Callable[[], Awaitable[None]] | None = None,
        on_probe_failure: Callable[[], None] | None = None,
    ):
        self.p2p, self.dht, self.identity, self.model_id, self.num_blocks = p2p, dht, identity, model_id, num_blocks
        self.self_id = str(p2p.peer_id)
        self.config = config
        self.membership = Membership(self.self_id, incarnation, config.suspicion_timeout)
        self.rng = rng or random.Random()
        self.on_refute = on_refute  # called when we raised our incarnation: re-announce it at once
        self.on_probe_failure = on_probe_failure or (lambda: None)  # a metric: a probe got no answer
        self._announced_incarnation = incarnation
        self._tasks: list[asyncio.Task] = []
        self._confirming: set[str] = set()  # peers whose death we are checking ourselves
        self._background: set[asyncio.Task] = set()
        self.limiter = RateLimiter(config.max_messages_per_s, burst=2 * config.max_messages_per_s)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await GossipService().add_p2p_handlers(self.p2p, wrapper=self)
        await self._seed()
        self._tasks = [asyncio.create_task(self._protocol_loop()), asyncio.create_task(self._seed_loop())]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        self._tasks = []
        await bounded(GossipService().remove_p2p_handlers(self.p2p), "removing the gossip handlers")

    def view(self) -> dict[str, str]:
        return self.membership.view()

    # ---- RPC handlers ------------------------------------------------------------------------------
    async def rpc_ping(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        if self._absorb(request.metadata, str(context.remote_id)) is None:
            return make_response({})  # an outsider of a private swarm: it learns nothing
        return self._answer({"ack": True})

    async def rpc_ping_req(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        sender = str(context.remote_id)
        meta = self._absorb(request.metadata, sender)
        if meta is None:
            return make_response({})
        target = meta.get("target")
        # Only members may ask, and only about members: no one uses us to ping arbitrary peers.
        ack = (
            sender in self.membership.members
            and isinstance(target, str)
            and target in self.membership.members
            and await self._ping(target, self.config.ping_timeout)
        )
        return self._answer({"ack": bool(ack)})

    def _absorb(self, raw: bytes, sender: str) -> dict | None:
        """Apply what ``sender`` (the connection's authenticated peer id) told us. Malformed,
        misattributed or too frequent messages change nothing and are never fatal; ``None``
        when the sender is not of this private swarm."""
        try:
            meta = unpack_meta(raw)
        except RemoteError:
            return {}
        swarm_key = self.identity.swarm_key
        if swarm_key is not None and not swarm_key.admits(sender, meta.get("auth")):
            return None
        claimed = meta.get("from")
        if claimed is not None and claimed != sender:
            logger.debug("ignoring a gossip message from %s that claims to be from %r", sender, claimed)
            return {}
        if not self.limiter.allow(sender):
            return meta
        self._apply_updates(sender, meta)
        return meta

    def _apply_updates(self, sender: str, meta: dict) -> None:
        """Apply the sender's incarnation and piggybacked updates (at most 64; bad ones skipped)."""
        raw_updates = meta.get("updates")
        updates = [Update.from_wire(raw) for raw in (raw_updates[:64] if isinstance(raw_updates, list) else [])]
        incarnation = meta.get("incarnation")
        incarnation = incarnation if isinstance(incarnation, int) and not isinstance(incarnation, bool) else None
        for update in self.membership.receive(sender, incarnation, [u for u in updates if u is not None]):
            if update.status == Status.DEAD and update.peer_id not in self._confirming:
                # Readers count a node dead only when more than one member says so: check it ourselves.
                self._confirming.add(update.peer_id)
                task = asyncio.ensure_future(self._confirm_dead(update))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _confirm_dead(self, verdict: Update) -> None:
        """Another member declared ``verdict.peer_id`` dead: if it does not answer us either,
        publish our own verdict (corroboration); if it does, it hears it was suspected and refutes."""
        try:
            if not await self._ping(verdict.peer_id, self.config.ping_timeout):
                await self._publish([verdict], spread=False)
        finally:
            self._confirming.discard(verdict.peer_id)

    def _message(self, to: str | None = None, **extra) -> dict:
        updates = [u.to_wire() for u in self.membership.piggyback()]
        suspicion = self.membership.members.get(to) if to else None
        if suspicion is not None and suspicion.status != Status.ALIVE:
            # Lifeguard's buddy system: tell a suspect (or a member we hold dead) what we think,
            # so it can refute at once.
            updates.insert(0, Update(to, suspicion.status, suspicion.incarnation).to_wire())
        message = {"from": self.self_id, "incarnation": self.membership.incarnation, "updates": updates, **extra}
        return self.identity.authenticate(message)

    def _answer(self, extra: dict) -> runtime_pb2.ExpertResponse:
        return make_response(self._message(**extra))

    # ---- probing -----------------------------------------------------------------------------------
    async def _call(self, peer_id: str, method: str, timeout: float, **extra) -> bool:
        try:
            stub = GossipService.get_stub(self.p2p, PeerID.from_base58(peer_id))
            request = make_request(self._message(to=peer_id, **extra))
            response = await getattr(stub, method)(request, timeout=timeout)
            meta, _ = read_response(response, peer_id)
        except Exception:  # noqa: BLE001 - unreachable, timed out, refused, a bad id: all mean "no ack"
            return False
        self._apply_updates(peer_id, meta)  # the peer we called answered: the connection vouches for it
        return meta.get("ack") is True

    async def _ping(self, peer_id: str, timeout: float) -> bool:
        return await self._call(peer_id, "rpc_ping", timeout)

    async def probe(self, target: str) -> bool:
        """SWIM's probe: direct ping, then indirect pings; a silent target becomes SUSPECT."""
        if await self._ping(target, self.config.ping_timeout):
            return True
        self.on_probe_failure()
        helpers = self.membership.others(target, self.config.indirect_k, self.rng)
        remaining = max(0.1, self.config.period - self.config.ping_timeout)
        if helpers:
            acks = await asyncio.gather(*(self._call(h, "rpc_ping_req", remaining, target=target) for h in helpers))
            if any(acks):
                return True
        if self.membership.suspect(target):
            logger.info("suspecting %s", target)
            await self._spread(self.config.indirect_k)  # others start their suspicion timers now
        return False

    async def _spread(self, fanout: int) -> None:
        """Push our freshest updates at once with pings to ``fanout`` random live members,
        instead of waiting for the next protocol periods to carry them."""
        peers = self.membership.others("", fanout, self.rng)
        if peers:
            await asyncio.gather(*(self._ping(p, self.config.ping_timeout) for p in peers))

    async def _protocol_loop(self) -> None:
        while True:
            began = asyncio.get_running_loop().time()
            try:
                await self._protocol_period()
            except Exception as e:  # noqa: BLE001 - one bad period must never end failure detection
                logger.warning("gossip protocol period failed: %s", e, exc_info=True)
            elapsed = asyncio.get_running_loop().time() - began
            await asyncio.sleep(max(0.0, self.config.period - elapsed))

    async def _protocol_period(self) -> None:
        await self._publish(self.membership.tick())
        target = self.membership.next_target(self.rng)
        if target is not None:
            await self.probe(target)
        await self._publish(self.membership.tick())
        if self.membership.incarnation != self._announced_incarnation and self.on_refute is not None:
            self._announced_incarnation = self.membership.incarnation
            await self.on_refute()

    async def _publish(self, verdicts: list[Update], spread: bool = True) -> None:
        """Tell every member (small swarms: a ping each) and write the verdicts to the DHT, so
        other nodes and clients stop using those nodes at once."""
        if not verdicts:
            return
        if spread:
            await self._spread(len(self.membership.members))
        for verdict in verdicts:
            logger.warning("declaring %s dead (incarnation %d)", verdict.peer_id, verdict.incarnation)
        items = [
            (
                dead_key(self.model_id),
                verdict_subkey(v.peer_id, self.self_id),
                DeadVerdict(v.peer_id, v.incarnation, self.self_id).to_wire(),
            )
            for v in verdicts
        ]
        try:
            await store_records(self.dht, self.identity, items, ttl=self.config.verdict_ttl)
        except Exception as e:  # noqa: BLE001 - retried with the next verdict; gossip itself goes on
            logger.warning("could not publish dead verdicts: %s", e)

    # ---- seeding from the DHT ---------------------------------------------------------------------
    async def _seed(self) -> None:
        try:
            snapshot = await fetch_snapshot(self.dht, self.model_id, self.num_blocks, self.identity.swarm_key)
        except Exception as e:  # noqa: BLE001 - try again next period
            logger.debug("seeding from the DHT failed: %s", e)
            return
        for record in snapshot.nodes.values():
            if record.state == NodeState.OFFLINE:
                self.membership.forget(record.peer_id)  # left gracefully: no verdict needed
            elif record.state != NodeState.JOINING and not snapshot.is_dead(record):
                # JOINING nodes are still loading and answer no pings yet: they join the group once ONLINE.
                self.membership.add_seed(record.peer_id, record.incarnation)

    async def _seed_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.seed_period)
            await self._seed()
