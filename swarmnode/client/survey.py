"""``swarmnode plan --from-swarm``: a live swarm's nodes as the planner's devices.

Reads the model's records (capacity, advertised speed), the observations clients share (time
per block measured in service), and pings every ONLINE node from here (round trips: a
node's own word is not taken for its distance), then hands them to the pure
:func:`swarmnode.server.planner.problem_from_swarm`.
"""

from __future__ import annotations

from swarmnode.client.pinger import Pinger
from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.errors import ConfigError
from swarmnode.records import NodeState
from swarmnode.routing.stigmergy import aggregate
from swarmnode.server.planner import Observed, Problem, problem_from_swarm

SHARED_CLAMP = 10.0  # no prior to clamp to here: this only bounds a single wild publisher's median
SESSIONS_CAP = 8


def survey_swarm(
    initial_peers: list[str], model_id: str | None = None, swarm_key_path: str = ""
) -> tuple[Problem, dict[str, str]]:
    """The planner's problem for the swarm's model (its only one, unless ``model_id`` is given)
    and each device's peer id."""
    overrides = {"initial_peers": tuple(initial_peers), "swarm_key_path": swarm_key_path or None}
    config = load_config(ClientConfig, overrides)
    connection = SwarmConnection(config)
    try:
        models = connection.run(connection.models(), timeout=60)
        if model_id is None:
            if len(models) != 1:
                raise ConfigError(f"the swarm serves {sorted(models) or 'no models'}: name one with --model-id")
            model_id = next(iter(models))
        record = models.get(model_id)
        if record is None:
            raise ConfigError(f"the swarm does not serve {model_id!r} (it serves {sorted(models)})")
        snapshot = connection.run(connection.snapshot(model_id, record.num_blocks, max_age=0), timeout=60)
        online = [r.peer_id for r in snapshot.live((NodeState.ONLINE,))]
        pings: dict[str, float] = {}
        pinger = Pinger(connection, pings, period=1.0, timeout=config.ping_timeout)
        connection.run(pinger.refresh(online), timeout=60)
        shared = aggregate(snapshot.shared, {}, skip_publisher=None, clamp=SHARED_CLAMP, sessions_cap=SESSIONS_CAP)
        observed = {
            peer: Observed(
                round_trip_s=pings.get(peer),
                per_block_s=shared.estimates[peer].per_block_s if peer in shared.estimates else None,
            )
            for peer in online
        }
        return problem_from_swarm(snapshot, observed)
    finally:
        connection.close()
