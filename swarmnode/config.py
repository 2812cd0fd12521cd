"""Frozen configuration of nodes and clients.

Precedence, highest first: command-line flags (or keyword arguments), ``SWARMNODE_*``
environment variables, a TOML config file (``[node]`` / ``[client]`` tables), defaults.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from swarmnode.errors import ConfigError
from swarmnode.records import QUANT_FORMATS, WEIGHT_LAYOUTS

ENV_PREFIX = "SWARMNODE_"
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(value: str | int | float | None) -> int | None:
    """Parse '3GB', '512MiB', '1.5G' or a plain byte count into bytes."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ConfigError(f"cannot parse size {value!r}: use e.g. 800MB, 3GiB or 1500000000")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    binary = "I" in unit
    unit = unit.replace("I", "").replace("B", "") or ("B" if unit else "")
    scale = (1024 ** "BKMGT".index(unit)) if binary else _SIZE_UNITS[unit]
    return int(number * scale)


@dataclass(frozen=True)
class NodeConfig:
    """Everything `swarmnode join` needs."""

    model: str = ""
    initial_peers: tuple[str, ...] = ()
    blocks: str = "auto"  # auto | N | START:END
    model_id: str = ""  # DHT id of the model; derived from `model` when empty
    identity_path: str = ""
    swarm_key_path: str = ""  # a private swarm's key file (swarmnode keygen); empty = a public swarm
    host_maddrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    announce_maddrs: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str = "auto"  # auto = the checkpoint's torch_dtype, float32 on CPU if it is half
    quant: str = "none"  # none, int8 or nf4: the blocks' Linear weights (models/quantize.py)
    weight_layout: str = "auto"  # auto, dense or packed: how a CPU node stores them (models/layout.py)
    max_memory: int | None = None  # bytes for weights + KV cache; None = detect
    cache_tokens: int | None = None  # node-wide KV-cache budget in tokens; None = derive
    max_session_length: int = 8192
    num_threads: int = 0  # torch threads; 0 = torch's default
    announce_period: float = 10.0
    throughput: str = "auto"  # auto = profile; or a number (tokens/s per block)
    profile_cache: bool = True  # reuse this device's stored profile (server/profile_cache.py)
    public_name: str = ""
    gossip_period: float = 1.0  # seconds between SWIM probes
    suspicion_timeout: float = 1.5  # seconds a member stays SUSPECT before it is declared DEAD
    metrics_port: int = 9156  # /metrics, /healthz, /readyz; 0 = off; taken (several nodes on a host): another one
    metrics_host: str = "0.0.0.0"
    # What one peer (one authenticated peer id) may hold on this node: strangers share it.
    max_sessions_per_peer: int = 64
    max_cache_share_per_peer: float = 0.5  # of the KV budget
    session_idle_timeout: float = 300.0  # seconds a session may wait for its next step before it is closed
    max_requests_per_peer_s: float = 200.0  # session opens and unary RPCs per second per peer
    # The step scheduler (swarmnode.server.scheduler) and admission control (server/admission.py).
    batching: bool = True  # merge concurrent sessions' decoding steps into one forward
    gather: bool = True  # with batching: wait briefly for steps about to arrive where it pays (batch_policy.py)
    prefill_chunk: int = 256  # prompt tokens per scheduler iteration
    max_batch: int = 64  # decoding steps per scheduler iteration
    max_step_ms: float = 0.0  # admission: projected decoding step of all sessions; 0 = derive (admission.py)
    # Rebalancing (--blocks auto or N; never START:END): how often a node reconsiders its span even when the swarm's
    # membership did not change (0 = never move), and by how much a move must raise the weakest block.
    rebalance_period: float = 60.0
    rebalance_margin: float = 0.2
    # auto: ask peers to dial this node back and serve through a relay if none can (net/reachability.py);
    # direct: never use a relay; relay: always (a node that knows it is behind a NAT).
    reachability: str = "auto"

    def __post_init__(self) -> None:
        if self.quant not in QUANT_FORMATS:
            raise ConfigError(f"quant must be one of {', '.join(QUANT_FORMATS)}, got {self.quant!r}")
        if self.weight_layout not in WEIGHT_LAYOUTS:
            raise ConfigError(f"weight_layout must be one of {', '.join(WEIGHT_LAYOUTS)}, got {self.weight_layout!r}")
        if self.max_sessions_per_peer < 1 or not 0 < self.max_cache_share_per_peer <= 1:
            raise ConfigError("max_sessions_per_peer must be >= 1 and max_cache_share_per_peer in (0, 1]")
        if self.session_idle_timeout <= 0 or self.max_requests_per_peer_s <= 0:
            raise ConfigError("session_idle_timeout and max_requests_per_peer_s must be positive")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in 0..65535 (0 = off), got {self.metrics_port}")
        if self.announce_period <= 0:
            raise ConfigError("announce_period must be positive")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}: use cpu, cuda or cuda:N")
        if self.gossip_period <= 0 or self.suspicion_timeout <= 0:
            raise ConfigError("gossip_period and suspicion_timeout must be positive")
        if self.max_session_length <= 0:
            raise ConfigError("max_session_length must be positive")
        if self.prefill_chunk < 1 or self.max_batch < 1 or self.max_step_ms < 0:
            raise ConfigError("prefill_chunk and max_batch must be >= 1, max_step_ms >= 0")
        if self.reachability not in ("auto", "direct", "relay"):
            raise ConfigError(f"reachability must be auto, direct or relay, got {self.reachability!r}")
        if self.rebalance_period < 0 or self.rebalance_margin < 0:
            raise ConfigError("rebalance_period (0 = never move) and rebalance_margin must be >= 0")
        if self.cache_tokens is not None and self.cache_tokens <= 0:
            raise ConfigError("cache_tokens must be positive")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client (DistributedModelForCausalLM, CLI generate/status) needs."""

    initial_peers: tuple[str, ...] = ()
    model_id: str = ""
    routing: str = "aco"  # aco | shortest | shortest_load | random
    share_period: float = 5.0  # seconds between publications of our routing observations
    ping_period: float = 30.0  # seconds between our pings of a node we may route through (0: never ping)
    ping_timeout: float = 2.0  # a node that has not answered a ping by then counts as this far away
    # Ant-colony parameters (see swarmnode.routing.aco.AcoParams for what each does and why).
    aco_alpha: float = 1.0
    aco_beta: float = 6.0
    aco_q0: float = 0.9
    aco_herd_load: float = 1.5
    aco_tau0: float = 0.5
    aco_tau_min: float = 0.05
    aco_tau_max: float = 1.0
    aco_deposit: float = 0.3
    aco_half_life_s: float = 30.0
    aco_reinforce_every: int = 8
    aco_load_penalty: float = 0.5
    aco_best_window: int = 64
    aco_estimate_decay: float = 0.3
    aco_shared_weight: float = 0.5
    aco_shared_clamp: float = 10.0
    aco_shared_sessions_cap: int = 8
    aco_busy_cap: float = 0.9
    aco_busy_max_age_s: float = 15.0
    aco_claim_ratio: float = 5.0
    aco_claim_slack_s: float = 0.025
    aco_claim_windows: int = 3
    aco_distrust_s: float = 120.0
    aco_distrust_load: float = 10.0
    # A failed node is avoided for ban_base_s, doubling with each further failure up to ban_max_s.
    ban_base_s: float = 2.0
    ban_max_s: float = 120.0
    wait_for_servers: float = 30.0  # seconds to wait for missing blocks before NoServersForBlocks
    busy_wait: float = 120.0  # seconds to wait while every node that could serve is at capacity
    exact: bool = False  # ask nodes never to batch our sessions' steps with others (bitwise results)
    wire_dtype: str = "float32"  # hidden states between hops: bfloat16/float16 halve the bytes (not exact)
    forwarding: bool = False  # hops send their outputs straight to the next hop (N+1 traversals, not 2N)
    debug_network_delay_ms: float = 0.0  # TESTING AID: hold every message this client sends (a far client)
    request_timeout: float = 30.0  # upper bound on any one RPC before the node counts as unresponsive
    # A hop that does not answer a step within floor + factor × its usual step time has failed.
    step_timeout_floor: float = 1.0
    step_timeout_factor: float = 10.0
    swarm_refresh_period: float = 2.0  # seconds between re-reads of the DHT records
    # A model's swarm view is kept fresh in the background for this long after its last use, so
    # that a session opened after a pause (a chat's next message) finds its route cached instead
    # of waiting for the DHT. 0: never (a view older than 5 refresh periods is then read anew).
    keep_fresh_for: float = 300.0
    # Spot-checks: this fraction of each hop's steps is recomputed by an independent replica
    # chain of the same span and compared (client/verify.py). 0 = off.
    verify_fraction: float = 0.0
    dtype: str = "float32"
    # The LM head on a float32 CPU client: packed (oneDNN, models/layout.py; SmolLM2's 49k-token
    # head 2.5x faster) or dense. Tied embeddings then keep their own dense copy (one more matrix).
    head_layout: str = "auto"
    # The least precise weights a node may serve this client: nf4 (any), int8, or none (full precision only).
    min_precision: str = "nf4"
    identity_path: str = ""
    swarm_key_path: str = ""  # a private swarm's key file (swarmnode keygen); empty = a public swarm

    def __post_init__(self) -> None:
        if self.min_precision not in QUANT_FORMATS:
            raise ConfigError(f"min_precision must be one of {', '.join(QUANT_FORMATS)}, got {self.min_precision!r}")
        if self.head_layout not in WEIGHT_LAYOUTS:
            raise ConfigError(f"head_layout must be one of {', '.join(WEIGHT_LAYOUTS)}, got {self.head_layout!r}")
        if self.wire_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"wire_dtype must be float32, bfloat16 or float16, got {self.wire_dtype!r}")
        if self.exact and self.wire_dtype != "float32":
            raise ConfigError("exact runs keep hidden states in float32 on the wire: drop wire_dtype or exact")
        if self.debug_network_delay_ms < 0:
            raise ConfigError("debug_network_delay_ms must be >= 0")
        if self.wait_for_servers < 0 or self.busy_wait < 0:
            raise ConfigError("wait_for_servers and busy_wait must be >= 0")
        if self.swarm_refresh_period <= 0 or self.keep_fresh_for < 0:
            raise ConfigError("need swarm_refresh_period > 0 and keep_fresh_for >= 0")
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout must be positive")
        if not 0.0 <= self.verify_fraction <= 1.0:
            raise ConfigError("verify_fraction must be in [0, 1]")
        if self.ping_period < 0 or self.ping_timeout <= 0:
            raise ConfigError("need ping_period >= 0 and ping_timeout > 0")
        if self.step_timeout_floor <= 0 or self.step_timeout_factor <= 0:
            raise ConfigError("step_timeout_floor and step_timeout_factor must be positive")
        known = ("aco", "shortest", "shortest_load", "random")
        if self.routing not in known:
            raise ConfigError(f"unknown routing policy {self.routing!r}: choose one of {known}")
        if not 0 < self.ban_base_s <= self.ban_max_s:
            raise ConfigError("need 0 < ban_base_s <= ban_max_s")
        self.aco_params()  # validates the aco_* fields

    def aco_params(self):
        """The ant-colony parameters as :class:`swarmnode.routing.AcoParams`."""
        from swarmnode.routing.aco import AcoParams

        prefix = "aco_"
        try:
            return AcoParams(
                **{
                    f.name[len(prefix) :]: getattr(self, f.name)
                    for f in dataclasses.fields(self)
                    if f.name.startswith(prefix)
                }
            )
        except ValueError as e:
            raise ConfigError(str(e)) from e


T = TypeVar("T")


def load_config(
    cls: type[T],
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike | None = None,
) -> T:
    """Build ``cls`` from overrides > SWARMNODE_* env > config file table > defaults.

    ``overrides`` entries whose value is None are treated as 'not given'.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_table(Path(config_file), cls, names))
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    for name, value in (overrides or {}).items():
        if name not in names:
            raise ConfigError(f"unknown {cls.__name__} option {name!r}")
        if value is not None:
            values[name] = value
    try:
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(str(e)) from e


def _read_table(path: Path, cls: type, names: set[str]) -> dict[str, Any]:
    table = "node" if cls is NodeConfig else "client"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{table}] in {path} must be a table")
    unknown = set(section) - names
    if unknown:
        raise ConfigError(f"unknown option(s) in [{table}] of {path}: {sorted(unknown)}")
    return dict(section)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    text = str(hint)
    try:
        if name in ("max_memory",):
            return parse_size(value)
        if "tuple" in text:
            if isinstance(value, str):
                return tuple(v for v in re.split(r"[,\s]+", value) if v)
            return tuple(str(v) for v in value)
        if "int" in text and "float" not in text:
            return None if value is None else int(value)
        if "float" in text:
            return float(value)
        if "bool" in text:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid value {value!r} for {name}: {e}") from e
