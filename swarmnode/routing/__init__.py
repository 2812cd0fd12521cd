"""Pure path selection (no sockets): the router interface and its policies."""

from swarmnode.routing.aco import AcoParams, AntColonyRouter, RandomRouter
from swarmnode.routing.base import Hop, Router
from swarmnode.routing.shortest import Bans, ShortestPathRouter, shortest_chain

POLICIES = ("aco", "shortest", "shortest_load", "random")


def make_router(policy: str, params: AcoParams = AcoParams()) -> Router:
    """The router for a ClientConfig.routing name (see DESIGN.md, "Routing")."""
    if policy == "aco":
        return AntColonyRouter(params)
    if policy == "shortest":
        return ShortestPathRouter()
    if policy == "shortest_load":  # the load term and best-of-two draws, but no learning
        return AntColonyRouter(params, learn=False, use_sharing=False)
    if policy == "random":
        return RandomRouter()
    raise ValueError(f"unknown routing policy {policy!r}; choose one of {POLICIES}")


__all__ = [
    "POLICIES",
    "AcoParams",
    "AntColonyRouter",
    "Bans",
    "Hop",
    "RandomRouter",
    "Router",
    "ShortestPathRouter",
    "make_router",
    "shortest_chain",
]
