"""A node's way into the swarm: its DHT peer, started directly or behind a relay.

:func:`connect` starts the DHT peer (hivemind, with p2pd under it) and a lifeline that kills
those helpers if the node dies; with ``--reachability auto`` it then asks its initial peers to
dial it back (``net/reachability.py``) and, if the majority of those that answer cannot, starts
the peer again behind a relay (``net/dht.py: start_dht_behind_relay``) and waits for its
relayed address. Nothing is announced before this returns, so the first peer simply goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import hivemind
from hivemind.p2p import P2P

from swarmnode.config import NodeConfig
from swarmnode.errors import SwarmUnavailable
from swarmnode.net.dht import full_maddrs, relay_of, start_dht, start_dht_behind_relay
from swarmnode.net.identity import Identity
from swarmnode.net.lifeline import start_lifeline, stop_lifeline
from swarmnode.net.reachability import check_reachability, listening_ports, serve_dial_back
from swarmnode.net.shutdown import bounded
from swarmnode.net.swarmkey import load_swarm_key

logger = logging.getLogger(__name__)
RELAY_WAIT_S = 60.0


@dataclass
class NodeConnection:
    """The node's DHT peer, its p2p handle, and the relay it is reached through (if any)."""

    dht: hivemind.DHT
    identity: Identity
    p2p: P2P  # a replica of the DHT's p2pd connection, for the node's own handlers
    lifeline: object
    relay: str = ""  # the relay's peer id when the node cannot be dialled directly
    relay_p2p: P2P | None = None  # then the p2pd runs under this process (start_dht_behind_relay)

    @property
    def peer_id(self) -> str:
        return str(self.p2p.peer_id)

    @property
    def maddrs(self) -> list[str]:
        return full_maddrs(self.dht)

    async def close(self) -> None:
        """Shut the p2p handle, the DHT peer and its p2pd down (safe to call once)."""
        await bounded(self.p2p.shutdown(), "closing the p2p handle")
        self.dht.shutdown()
        if self.relay_p2p is not None:
            await bounded(self.relay_p2p.shutdown(), "closing the relay's p2p handle")
        stop_lifeline(self.lifeline)


async def connect(cfg: NodeConfig) -> NodeConnection:
    """Start the node's DHT peer, behind a relay where it cannot be dialled (module docstring)."""
    dht, identity = start_dht(
        cfg.initial_peers,
        host_maddrs=cfg.host_maddrs,
        announce_maddrs=cfg.announce_maddrs,
        identity_path=cfg.identity_path,
        swarm_key=load_swarm_key(cfg.swarm_key_path),
    )
    lifeline = start_lifeline([dht.pid])
    try:
        conn = NodeConnection(dht, identity, await dht.replicate_p2p(), lifeline)
        await serve_dial_back(conn.p2p)
    except BaseException:
        dht.shutdown()
        stop_lifeline(lifeline)
        raise
    try:
        needs_relay = await _needs_relay(cfg, conn)
    except BaseException:
        await conn.close()
        raise
    if not needs_relay:
        return conn
    await conn.close()
    return await _connect_behind_relay(cfg)


async def _needs_relay(cfg: NodeConfig, conn: NodeConnection) -> bool:
    """``--reachability``: relay or direct as told; ``auto``: whether the initial peers failed to dial us back."""
    if cfg.reachability != "auto":
        return cfg.reachability == "relay"
    helpers = [m.rsplit("/p2p/", 1)[1] for m in cfg.initial_peers if "/p2p/" in m]
    ports = listening_ports([str(m) for m in await conn.p2p.get_visible_maddrs(latest=True)])
    if not helpers or not ports:
        return False
    reachable, answers = await check_reachability(conn.p2p, helpers, ports)
    logger.info("dial-back: %s", [a for a in answers if a is not None] or "no helper answered")
    return reachable is False


async def _connect_behind_relay(cfg: NodeConfig) -> NodeConnection:
    logger.warning("no peer could dial this node back: it is behind a NAT or firewall; serving through a relay")
    dht, identity, relay_p2p = await start_dht_behind_relay(
        cfg.initial_peers,
        host_maddrs=cfg.host_maddrs,
        identity_path=cfg.identity_path,
        swarm_key=load_swarm_key(cfg.swarm_key_path),
    )
    # The p2pd is this process's child here: the lifeline must kill it too if the node dies.
    lifeline = start_lifeline([dht.pid, relay_p2p._child.pid])
    conn = NodeConnection(dht, identity, await dht.replicate_p2p(), lifeline, relay_p2p=relay_p2p)
    try:
        await serve_dial_back(conn.p2p)
        deadline = time.monotonic() + RELAY_WAIT_S
        while not conn.relay:
            conn.relay = relay_of([str(m) for m in await conn.p2p.get_visible_maddrs(latest=True)])
            if not conn.relay:
                if time.monotonic() > deadline:
                    raise SwarmUnavailable(
                        f"this node cannot be dialled and no relay took it within {RELAY_WAIT_S:.0f} s: its "
                        "initial peers must be reachable peers of the swarm (they serve as relays)"
                    )
                await asyncio.sleep(0.5)
    except BaseException:
        await conn.close()
        raise
    logger.info("reachable through relay %s", conn.relay)
    return conn
