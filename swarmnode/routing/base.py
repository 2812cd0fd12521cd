"""The router interface: how a client picks its chain of nodes.

A router is pure: it decides from a :class:`~swarmnode.records.SwarmSnapshot` and what
the client reports back (step times, failures). The client only ever talks to this
interface, so policies (shortest path today, the ant-colony selector next) drop in
without touching the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from swarmnode.records import SwarmSnapshot


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
        self, hop: Hop, seconds: float, tokens: int, compute_seconds: float | None = None, busy: float | None = None
    ) -> None:
        """A hop answered a step of ``tokens`` tokens in ``seconds`` (round trip; the node's own
        compute time and busy fraction, when it reported them, in ``compute_seconds`` and ``busy``)."""
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
