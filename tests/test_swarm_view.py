"""The client's cached view of the swarm: kept fresh in the background while a model is in use,
so that a session opened after a pause finds its route without waiting for the DHT."""

import time

import pytest
import torch

from swarmnode.client.swarm import STALE_LIMIT, keeper_action
from swarmnode.config import ClientConfig
from swarmnode.errors import ConfigError
from tests.conftest import swarm_client


def test_the_keeper_refreshes_a_view_before_it_expires_and_forgets_unused_models():
    period, keep_for = 2.0, 300.0
    # Fetched just now, or more than two looks before it would be too old to serve: nothing to do.
    assert keeper_action(100.0, 99.0, 100.0, period, keep_for) == "wait"
    assert keeper_action(100.0, 99.0, 100.0 - (STALE_LIMIT - 2) * period + 0.1, period, keep_for) == "wait"
    # Two looks from expiring (the read gets a whole period to finish), or never read: read it now.
    assert keeper_action(100.0, 99.0, 100.0 - (STALE_LIMIT - 2) * period, period, keep_for) == "refresh"
    assert keeper_action(100.0, 99.0, None, period, keep_for) == "refresh"
    # Nobody asked for the model in keep_for seconds: stop reading the DHT for it.
    assert keeper_action(400.0, 99.0, 10.0, period, keep_for) == "forget"
    assert keeper_action(100.0, 99.0, 10.0, period, 0.0) == "forget"


@pytest.mark.parametrize("bad", [{"swarm_refresh_period": 0}, {"keep_fresh_for": -1}])
def test_refresh_settings_are_checked(bad):
    with pytest.raises(ConfigError):
        ClientConfig(initial_peers=("/ip4/127.0.0.1/tcp/1",), **bad)


@pytest.mark.swarm
@pytest.mark.parametrize("keep_fresh_for", [300.0, 0.0])
def test_a_pause_longer_than_the_views_lifetime_keeps_the_route_cached(llama_swarm, llama_path, keep_fresh_for):
    period = 0.5  # a view is served up to STALE_LIMIT periods (2.5 s) old, then read anew
    with swarm_client(llama_swarm, llama_path, swarm_refresh_period=period, keep_fresh_for=keep_fresh_for) as model:
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2)
        time.sleep(2 * STALE_LIMIT * period)  # a user reading the answer
        age = model.connection.view_age(model.remote.model_id)
        if keep_fresh_for:
            assert age < STALE_LIMIT * period  # the next session's route needs no DHT read
        else:
            assert age >= 2 * STALE_LIMIT * period  # nothing read it since: the next session will wait
