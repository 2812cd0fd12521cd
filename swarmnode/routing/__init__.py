"""Pure path selection (no sockets): the router interface and its policies."""

from swarmnode.routing.base import Hop, Router
from swarmnode.routing.shortest import Bans, ShortestPathRouter, shortest_chain


def make_router(policy: str) -> Router:
    """The router for a ClientConfig.routing name."""
    if policy == "shortest":
        return ShortestPathRouter()
    raise ValueError(f"unknown routing policy {policy!r}")


__all__ = ["Bans", "Hop", "Router", "ShortestPathRouter", "make_router", "shortest_chain"]
