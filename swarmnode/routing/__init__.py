"""Pure path selection (no sockets): the router interface and its policies."""

import dataclasses

from swarmnode.routing.aco import AcoParams, AntColonyRouter, RandomRouter
from swarmnode.routing.base import Hop, Router
from swarmnode.routing.shortest import Bans, ShortestPathRouter, shortest_chain

POLICIES = ("aco", "shortest", "shortest_load", "random")


def shortest_load_params(params: AcoParams = AcoParams()) -> AcoParams:
    """The parameters of the ``shortest_load`` baseline: best of two always (no herding rule),
    as the baseline is defined (docs/routing.md)."""
    return dataclasses.replace(params, herd_load=0.0)


def make_router(
    policy: str,
    params: AcoParams = AcoParams(),
    *,
    bans: Bans | None = None,
    publisher_id: str | None = None,
    pings: dict[str, float] | None = None,
) -> Router:
    """The router for a ClientConfig.routing name (see DESIGN.md, "Routing"); ``publisher_id``
    is the key this client shares its observations under; ``pings`` the round trips the client
    measures (peer id → seconds, kept up to date by the caller; see client/pinger.py)."""
    bans = bans or Bans()
    pings = pings if pings is not None else {}
    if policy == "aco":
        return AntColonyRouter(params, bans=bans, publisher_id=publisher_id, pings=pings)
    if policy == "shortest":
        return ShortestPathRouter(bans=bans, pings=pings)
    if policy == "shortest_load":  # the load term from session counts and best-of-two draws; no learning
        return AntColonyRouter(
            shortest_load_params(params), learn=False, use_sharing=False, use_busy=False, bans=bans, pings=pings
        )
    if policy == "random":
        return RandomRouter(bans=bans)
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
    "shortest_load_params",
    "shortest_chain",
]
