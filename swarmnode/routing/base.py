"""The router interface: how a client picks its chain of nodes.

A router is pure: it decides from a :class:`~swarmnode.records.SwarmSnapshot` and what
the client reports back (step times, failures). The client only ever talks to this
interface, so policies (shortest path today, the ant-colony selector next) drop in
without touching the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from swarmnode.records import NodeRecord, SwarmSnapshot

RELAY_LEGS = 2  # a relayed node is reached client -> relay -> node: two network legs, not one


def unmeasured_delay_s(record: NodeRecord, hop_overhead_s: float) -> float:
    """The round trip to assume for a node nobody measured yet: one hop's overhead, or two for a
    node announced behind a relay. Measured round trips (the client's pings go through the
    relay too) replace it as soon as they exist."""
    return hop_overhead_s * (RELAY_LEGS if record.relay else 1)


@dataclass(frozen=True)
class Hop:
    """One link of a chain: node ``peer_id`` runs blocks [start, end)."""

    peer_id: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.peer_id[-8:]}[{self.start}:{self.end}]"


class Router(Protocol):
    """What the client needs from a routing policy."""

    def choose_chain(
        self, snapshot: SwarmSnapshot, start: int, end: int, *, exclude: frozenset[str] = frozenset()
    ) -> list[Hop]:
        """A chain covering blocks [start, end); raises NoServersForBlocks when none exists."""
        ...

    def report_step(
        self,
        hop: Hop,
        seconds: float,
        tokens: int,
        compute_seconds: float | None = None,
        busy: float | None = None,
        slowdown: float | None = None,
        node_seconds: float | None = None,
    ) -> None:
        """A hop answered a step of ``tokens`` tokens in ``seconds`` (round trip; the node's own
        compute time, busy fraction, slowdown and time in the node (request decoded to answer
        built), when it reported them, in ``compute_seconds``, ``busy``, ``slowdown`` and
        ``node_seconds``)."""
        ...

    def report_failure(self, hop: Hop, error: BaseException) -> None:
        """A hop failed (error, closed stream or timeout)."""
        ...

    def hold(self, hops: list[Hop]) -> None:
        """One of our sessions now runs through ``hops``."""
        ...

    def release(self, hops: list[Hop]) -> None:
        """One of our sessions no longer runs through ``hops`` (closed, or hops replaced)."""
        ...
