"""Every record SwarmBee puts in the DHT.

Records are frozen dataclasses with ``to_wire()`` (a msgpack-friendly dict) and
``from_wire()``. Each carries a schema version ``v``. Readers are tolerant: unknown
fields are ignored, and a record that cannot be parsed makes ``from_wire`` return
``None`` instead of raising, so one bad record never breaks a reader.

Keys (see DESIGN.md, "Records in the DHT"):

- ``{model}.servers`` → subkey peer id → :class:`NodeRecord` (its span inside)
- ``_swarm.models`` → subkey model id → :class:`ModelRecord`
- ``{model}.dead`` → subkey ``subject@reporter`` → :class:`DeadVerdict`
- ``{model}.observations`` → subkey client peer id → that client's measurements

DESIGN.md keys node records per block (``{model}.blocks.{i}``); they live under one key per
model here because every reader (clients, gossip seeding, the rebalancer, the monitor) reads
the whole model, and a read costs per key in every DHT peer it reaches: 32 keys for a
30-block model against 3 (docs/token_budget.md, "Eighth round").
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1
# Weight formats a node may serve (NodeRecord.quantization), and their order: higher is more
# precise. What ClientConfig(min_precision=...) and spot-checks' tolerances go by.
QUANT_FORMATS = ("none", "int8", "nf4")
PRECISION = {"nf4": 0, "int8": 1, "none": 2}
# How a CPU node stores its Linear weights (swarmnode/models/layout.py); auto is resolved at join,
# so a record (NodeRecord.layout) says dense or packed.
WEIGHT_LAYOUTS = ("auto", "dense", "packed")


def precise_enough(quant: str, minimum: str) -> bool:
    """Whether weights in format ``quant`` are at least as precise as ``minimum`` (an unknown
    format, from a newer or broken peer, is not)."""
    if minimum not in PRECISION:
        raise ValueError(f"minimum precision must be one of {', '.join(QUANT_FORMATS)}, got {minimum!r}")
    return quant in PRECISION and PRECISION[quant] >= PRECISION[minimum]


MODELS_KEY = "_swarm.models"
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NodeState(enum.IntEnum):
    """Lifecycle of a node; the order matters (a higher state is 'more available')."""

    OFFLINE = 0
    JOINING = 1
    DRAINING = 2
    ONLINE = 3


def servers_key(model_id: str) -> str:
    """DHT key under which the nodes serving ``model_id`` announce themselves (subkey: peer id;
    the record names the node's span)."""
    return f"{model_id}.servers"


def dead_key(model_id: str) -> str:
    """DHT key of gossip's dead verdicts about ``model_id``'s nodes (subkey: peer id)."""
    return f"{model_id}.dead"


def verdict_subkey(peer_id: str, reporter: str) -> str:
    """Subkey of one member's verdict about ``peer_id``: every reporter keeps its own."""
    return f"{peer_id}@{reporter}"


def corroborated_dead(nodes: dict[str, NodeRecord], verdicts: list[DeadVerdict]) -> dict[str, int]:
    """Peer id → the incarnation declared dead, counting only verdicts that hold up.

    A verdict counts when its reporter is a member (a node with a record that has not left)
    other than the subject, and it covers the subject's newest announced incarnation (a
    node's own newer record outranks any verdict). A node is dead once more than one member
    says so; in a swarm where only one other member exists, that one suffices.
    """
    members = {peer for peer, record in nodes.items() if record.state != NodeState.OFFLINE}
    reporters: dict[str, set[str]] = {}
    for verdict in verdicts:
        subject = nodes.get(verdict.peer_id)
        if subject is None or verdict.reporter not in members or verdict.reporter == verdict.peer_id:
            continue
        if verdict.incarnation >= subject.incarnation:
            reporters.setdefault(verdict.peer_id, set()).add(verdict.reporter)
    dead = {}
    for peer, who in reporters.items():
        needed = min(2, len(members - {peer}))
        if len(who) >= needed:
            dead[peer] = nodes[peer].incarnation
    return dead


def block_runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of the sorted block indices ``blocks`` ([3, 4, 7] → [(3, 5), (7, 8)])."""
    runs: list[list[int]] = []
    for block in blocks:
        if runs and runs[-1][1] == block:
            runs[-1][1] = block + 1
        else:
            runs.append([block, block + 1])
    return [(start, end) for start, end in runs]


def observations_key(model_id: str) -> str:
    """DHT key of clients' shared routing observations (subkey: the publishing client)."""
    return f"{model_id}.observations"


def model_id_from_name(name: str) -> str:
    """Turn a hub name or local path into a DHT-safe model id ('org/Model-7B' → 'org--Model-7B')."""
    base = name.rstrip("/")
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")]
    if "/" in base and not base.startswith((".", "/")) and base.count("/") == 1:
        candidate = base.replace("/", "--")  # a hub name like org/model
    else:
        candidate = base.rsplit("/", 1)[-1]
    candidate = re.sub(r"[^A-Za-z0-9._-]", "-", candidate).lstrip("._-")
    return validate_model_id(candidate[:128] or "model")


def validate_model_id(model_id: str) -> str:
    """Return ``model_id`` if it is safe to use in DHT keys, else raise ValueError."""
    if not isinstance(model_id, str) or not _MODEL_ID_RE.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}: use 1-128 letters, digits, '.', '_' or '-'")
    return model_id


MAX_BLOCKS = 1 << 16  # more blocks than any model has
MAX_INCARNATION = 1 << 53  # incarnations are start times in ms; exact in every wire format
MAX_CLOCK_SKEW_S = 300.0  # how far ahead of a reader's clock a peer's timestamp or incarnation may be
MAX_COUNT = 1 << 40  # token counts, sessions
MAX_RATE = 1e9  # tokens/s per block: far above any device, finite
MAX_SLOWDOWN = 1000.0  # a node's slowdown (time in node / compute per step) beyond this is nonsense, not load
MAX_TEXT = {"peer_id": 128, "dtype": 32, "quantization": 32, "version": 64, "public_name": 64, "metrics_addr": 256,
            "model_id": 128, "family": 64, "repository": 256, "config_hash": 128, "reporter": 128,
            "relay": 128, "layout": 16}  # fmt: skip


def _int_in(value: Any, low: int, high: int) -> int:
    """An integer (not a bool, not a float) in [low, high], else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{value!r} is not an integer in [{low}, {high}]")
    return value


def _float_in(value: Any, low: float, high: float) -> float:
    """A finite number in [low, high] (NaN and infinities fail), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{value!r} is not a number in [{low}, {high}]")
    return float(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT[name]:
        raise ValueError(f"{name} must be a string of at most {MAX_TEXT[name]} characters")
    return value


def _known_fields(cls: type, raw: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@dataclass(frozen=True)
class NodeRecord:
    """What a node advertises about itself for each block it serves."""

    peer_id: str
    state: NodeState
    start: int
    end: int
    inference_rps: float = 0.0  # tokens/s per block, one token per step
    prefill_rps: float = 0.0  # tokens/s per block, long prompts
    cache_tokens_left: int = 0
    active_sessions: int = 0
    busy: float = -1.0  # fraction of the last few seconds spent computing; -1 = not known (older nodes)
    slowdown: float = -1.0  # decoding steps' recent time in node / compute (>= 1); -1 = no recent step, or older nodes
    dtype: str = "float32"
    quantization: str = "none"
    layout: str = "dense"  # how a CPU node stores its weights (models/layout.py): rounding-level differences
    version: str = ""
    public_name: str = ""
    metrics_addr: str = ""
    timestamp: float = 0.0  # DHT time of the announcement; the newest one wins
    incarnation: int = 0  # raised by every (re)start; a dead verdict only covers older or equal ones
    max_blocks: int = 0  # blocks its memory budget holds (with their KV reserve): the planner's capacity; 0 = unknown
    relay: str = ""  # peer id of the relay it is reached through (it cannot be dialled directly); "" = direct
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end):
            raise ValueError(f"invalid span {self.start}:{self.end}")

    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    def serves(self, block: int) -> bool:
        return self.start <= block < self.end

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["state"] = int(self.state)
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> NodeRecord | None:
        """Parse a record; ``None`` when it is not a valid NodeRecord."""
        if not isinstance(raw, dict):
            return None
        try:
            kwargs = _known_fields(cls, raw)
            kwargs["state"] = NodeState(_int_in(kwargs["state"], 0, 3))
            kwargs["start"] = _int_in(kwargs["start"], 0, MAX_BLOCKS)
            kwargs["end"] = _int_in(kwargs["end"], 1, MAX_BLOCKS)
            if "max_blocks" in kwargs:
                kwargs["max_blocks"] = _int_in(kwargs["max_blocks"], 0, MAX_BLOCKS)
            for name in ("cache_tokens_left", "active_sessions"):
                if name in kwargs:
                    kwargs[name] = _int_in(kwargs[name], 0, MAX_COUNT)
            if "incarnation" in kwargs:
                kwargs["incarnation"] = _int_in(kwargs["incarnation"], 0, MAX_INCARNATION)
            if "v" in kwargs:
                kwargs["v"] = _int_in(kwargs["v"], 0, 1 << 16)
            for name in ("inference_rps", "prefill_rps"):
                if name in kwargs:
                    kwargs[name] = _float_in(kwargs[name], 0.0, MAX_RATE)
            if "timestamp" in kwargs:
                kwargs["timestamp"] = _float_in(kwargs["timestamp"], 0.0, 1e12)
            for name in MAX_TEXT.keys() & kwargs.keys():  # every text field
                _text(name, kwargs[name])
            if "busy" in kwargs:
                busy = kwargs["busy"]
                if isinstance(busy, bool) or not isinstance(busy, int | float):
                    raise ValueError(f"busy must be a number, got {busy!r}")
                kwargs["busy"] = float(busy) if 0.0 <= busy <= 1.0 else -1.0  # NaN, out of range: not known
            if "slowdown" in kwargs:
                slowdown = kwargs["slowdown"]
                if isinstance(slowdown, bool) or not isinstance(slowdown, int | float):
                    raise ValueError(f"slowdown must be a number, got {slowdown!r}")
                kwargs["slowdown"] = float(slowdown) if 1.0 <= slowdown <= MAX_SLOWDOWN else -1.0
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ModelRecord:
    """What the swarm serves: one record per model under ``_swarm.models``."""

    model_id: str
    num_blocks: int
    family: str
    repository: str = ""
    config_hash: str = ""
    v: int = SCHEMA_VERSION

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, raw: Any) -> ModelRecord | None:
        if not isinstance(raw, dict):
            return None
        try:
            kwargs = _known_fields(cls, raw)
            kwargs["num_blocks"] = _int_in(kwargs["num_blocks"], 1, MAX_BLOCKS)
            for name in ("model_id", "family", "repository", "config_hash"):
                if name in kwargs:
                    _text(name, kwargs[name])
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class DeadVerdict:
    """Gossip's verdict that a node (at some incarnation) is dead; short-lived in the DHT."""

    peer_id: str
    incarnation: int
    reporter: str = ""
    v: int = SCHEMA_VERSION

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, raw: Any) -> DeadVerdict | None:
        if not isinstance(raw, dict):
            return None
        try:
            kwargs = _known_fields(cls, raw)
            _text("peer_id", kwargs["peer_id"])
            if "reporter" in kwargs:
                _text("reporter", kwargs["reporter"])
            kwargs["incarnation"] = _int_in(kwargs["incarnation"], 0, MAX_INCARNATION)
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SwarmSnapshot:
    """What one reader saw of one model's swarm at one moment: node records by peer id, and
    gossip's corroborated dead verdicts (peer id → the incarnation declared dead; see
    :func:`corroborated_dead`)."""

    model_id: str
    num_blocks: int
    nodes: dict[str, NodeRecord]
    dead: dict[str, int] = field(default_factory=dict)
    shared: dict[str, dict] = field(default_factory=dict)  # publisher → its per-node observations
    verdicts: tuple[DeadVerdict, ...] = ()  # every well-formed verdict read, corroborated or not

    def is_dead(self, record: NodeRecord) -> bool:
        """A verdict covers the record's incarnation: the node died since it announced it."""
        return record.peer_id in self.dead and self.dead[record.peer_id] >= record.incarnation

    def state_name(self, record: NodeRecord) -> str:
        """The record's state, or DEAD when a verdict covers it; a node that said goodbye stays
        OFFLINE even if gossip saw it vanish and called it dead."""
        if self.is_dead(record) and record.state != NodeState.OFFLINE:
            return "DEAD"
        return record.state.name

    def live(self, states: tuple[NodeState, ...] = (NodeState.ONLINE,)) -> list[NodeRecord]:
        """Nodes in ``states`` without a dead verdict."""
        return [r for r in self.nodes.values() if r.state in states and not self.is_dead(r)]

    def serving(self, block: int, states: tuple[NodeState, ...] = (NodeState.ONLINE,)) -> list[NodeRecord]:
        """Live nodes in ``states`` whose span contains ``block``."""
        return [r for r in self.live(states) if r.serves(block)]

    def uncovered(self, start: int = 0, end: int | None = None) -> list[int]:
        """Blocks in [start, end) that no ONLINE node serves."""
        end = self.num_blocks if end is None else end
        return [b for b in range(start, end) if not self.serving(b)]
