import dataclasses

import pytest

from swarmnode.config import ClientConfig, NodeConfig, load_config, parse_size
from swarmnode.errors import ConfigError
from swarmnode.routing import AcoParams


def test_parse_size():
    assert parse_size("3GB") == 3 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("1234") == 1234
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    config_file = tmp_path / "swarm.toml"
    config_file.write_text('[node]\nblocks = "0:2"\nannounce_period = 5.0\nmax_memory = "2GB"\ndevice = "cpu"\n')
    env = {"SWARMNODE_ANNOUNCE_PERIOD": "7", "SWARMNODE_INITIAL_PEERS": "/ip4/1.2.3.4/tcp/1/p2p/QmX,/ip4/5/p2p/Y"}
    config = load_config(NodeConfig, {"blocks": "3:4", "device": None}, env=env, config_file=config_file)
    assert config.blocks == "3:4"  # flag beats file
    assert config.announce_period == 7.0  # env beats file
    assert config.max_memory == 2 * 10**9  # file beats default
    assert config.initial_peers == ("/ip4/1.2.3.4/tcp/1/p2p/QmX", "/ip4/5/p2p/Y")
    assert config.cache_tokens is None  # default


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nnot_an_option = 1\n")
    with pytest.raises(ConfigError, match="not_an_option"):
        load_config(NodeConfig, {}, env={}, config_file=bad)
    with pytest.raises(ConfigError, match="device"):
        load_config(NodeConfig, {"device": "tpu"}, env={})
    with pytest.raises(ConfigError, match="announce_period"):
        load_config(NodeConfig, {"announce_period": "soon"}, env={})
    with pytest.raises(ConfigError, match="routing"):
        load_config(ClientConfig, {"routing": "teleport"}, env={})
    with pytest.raises(ConfigError, match="tau_min"):
        load_config(ClientConfig, {"aco_tau_min": 0.9, "aco_tau_max": 0.5}, env={})
    with pytest.raises(ConfigError, match="shared_clamp"):
        load_config(ClientConfig, {"aco_shared_clamp": 0.5}, env={})
    with pytest.raises(ConfigError, match="ban_base_s"):
        load_config(ClientConfig, {"ban_base_s": 10, "ban_max_s": 5}, env={})
    with pytest.raises(ConfigError, match="quant must be one of none, int8, nf4"):
        load_config(NodeConfig, {"quant": "fp8"}, env={})
    with pytest.raises(ConfigError, match="min_precision"):
        load_config(ClientConfig, {"min_precision": "int4"}, env={})
    assert load_config(NodeConfig, {}, env={"SWARMNODE_QUANT": "nf4"}).quant == "nf4"
    params = load_config(ClientConfig, {"aco_beta": "3"}, env={"SWARMNODE_ACO_Q0": "0.5"}).aco_params()
    assert (params.beta, params.q0) == (3.0, 0.5)


def test_every_ant_colony_parameter_is_a_client_option():
    options = {f.name for f in dataclasses.fields(ClientConfig)}
    assert {f"aco_{f.name}" for f in dataclasses.fields(AcoParams)} <= options
