"""Placement of a model's blocks on heterogeneous devices, after EdgeShard: pure functions.

Given devices (how many blocks each can hold, and the time one block's decoding step takes
there) and the network between them and the client (latency, bandwidth), choose an ordered
chain of distinct devices and a contiguous span for each so that

- ``latency``: one token's trip — client → first device, each device's blocks, the hand-overs
  between devices, last device → client — is as short as possible (EdgeShard's latency
  objective), or
- ``throughput``: the slowest pipeline stage (a device's compute, or a link's transfer) is as
  fast as possible (EdgeShard's throughput objective: tokens of many sessions flow through the
  stages at once).

Both are solved exactly by a dynamic program over (blocks placed, last device, devices used),
exponential only in the number of devices (a bitmask; fine for the tens of devices a swarm's
planner is asked about) and checked against brute force in the tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from swarmnode.records import NodeState, SwarmSnapshot

CLIENT = "client"
OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Device:
    """One device: ``capacity`` blocks fit in its memory; ``block_s`` per block per decoding step."""

    name: str
    capacity: int
    block_s: float

    def __post_init__(self) -> None:
        if not self.name or self.name == CLIENT:
            raise ValueError(f"a device needs a name other than {CLIENT!r}")
        if self.capacity < 0 or not (self.block_s > 0 and math.isfinite(self.block_s)):
            raise ValueError(f"{self.name}: capacity must be >= 0 and block_s positive")


@dataclass(frozen=True)
class Link:
    """One direction's network cost: ``latency_s`` plus bytes / ``bandwidth_bps`` (bytes/s)."""

    latency_s: float = 0.0
    bandwidth_bps: float = math.inf

    def transfer_s(self, nbytes: int) -> float:
        return self.latency_s + (nbytes / self.bandwidth_bps if self.bandwidth_bps > 0 else math.inf)


@dataclass(frozen=True)
class Problem:
    """What the planner is asked: ``blocks`` of a model, ``message_bytes`` per hand-over (one
    token's hidden state), the devices and the links between them and the client (missing
    links cost nothing: same machine or unknown)."""

    blocks: int
    devices: tuple[Device, ...]
    message_bytes: int = 0
    links: dict[tuple[str, str], Link] = field(default_factory=dict)

    def transfer_s(self, src: str, dst: str) -> float:
        link = self.links.get((src, dst)) or self.links.get((dst, src)) or Link()
        return link.transfer_s(self.message_bytes)


@dataclass(frozen=True)
class Stage:
    device: str
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """The chosen chain and what it is predicted to cost per token."""

    stages: tuple[Stage, ...]
    latency_s: float  # one token end to end
    bottleneck_s: float  # the slowest stage or link: 1 / pipeline throughput


def evaluate(problem: Problem, stages: tuple[Stage, ...]) -> Plan:
    """Predicted latency and bottleneck of a given chain (also what brute force scores)."""
    by_name = {d.name: d for d in problem.devices}
    hops = [CLIENT, *(s.device for s in stages), CLIENT]
    transfers = [problem.transfer_s(a, b) for a, b in itertools.pairwise(hops)]
    computes = [(s.end - s.start) * by_name[s.device].block_s for s in stages]
    return Plan(stages, sum(transfers) + sum(computes), max(transfers + computes))


def plan(problem: Problem, objective: str = "latency") -> Plan:
    """The optimal chain for ``objective`` (ValueError when the devices cannot hold the model)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
    devices, blocks = problem.devices, problem.blocks
    if sum(min(d.capacity, blocks) for d in devices) < blocks:
        raise ValueError(f"the devices hold {sum(d.capacity for d in devices)} blocks in all, the model has {blocks}")
    combine = (lambda a, b: a + b) if objective == "latency" else max
    # best[(placed, last, used)] = (cost so far, previous state, stage): cost excludes the way back.
    best: dict[tuple[int, int, int], tuple[float, tuple | None, Stage | None]] = {}
    best[(0, -1, 0)] = (0.0, None, None)
    for placed in range(blocks):  # states of this many blocks only come from fewer: final by now
        for state in [s for s in best if s[0] == placed]:
            cost, _, _ = best[state]
            _, last, used = state
            src = CLIENT if last < 0 else devices[last].name
            for i, device in enumerate(devices):
                if used >> i & 1:
                    continue
                hop = problem.transfer_s(src, device.name)
                for n in range(1, min(device.capacity, blocks - placed) + 1):
                    step = combine(hop, n * device.block_s)
                    new = (placed + n, i, used | 1 << i)
                    total = combine(cost, step)
                    if new not in best or total < best[new][0]:
                        best[new] = (total, state, Stage(device.name, placed, placed + n))
    finals = [(combine(c, problem.transfer_s(devices[s[1]].name, CLIENT)), s) for s, (c, _, _) in best.items()
              if s[0] == blocks]  # fmt: skip
    _, state = min(finals, key=lambda item: (item[0], item[1][2]))
    stages = []
    while best[state][1] is not None:
        stages.append(best[state][2])
        state = best[state][1]
    return evaluate(problem, tuple(reversed(stages)))


def brute_force(problem: Problem, objective: str = "latency") -> Plan:
    """Every ordered chain of distinct devices and every split of the blocks (for tests)."""
    blocks, found = problem.blocks, []
    for k in range(1, len(problem.devices) + 1):
        for chain in itertools.permutations(problem.devices, k):
            for cuts in itertools.combinations(range(1, blocks), k - 1):
                bounds = (0, *cuts, blocks)
                if all(b - a <= d.capacity for d, a, b in zip(chain, bounds, bounds[1:], strict=False)):
                    stages = tuple(Stage(d.name, a, b) for d, a, b in zip(chain, bounds, bounds[1:], strict=False))
                    found.append(evaluate(problem, stages))
    if not found:
        raise ValueError("the devices cannot hold the model")
    key = (lambda p: p.latency_s) if objective == "latency" else (lambda p: p.bottleneck_s)
    return min(found, key=key)


def even_split(problem: Problem) -> Plan:
    """The blocks split as evenly as possible over every device, in the order given (the
    baseline a plan should beat); ValueError if a share does not fit."""
    count = len(problem.devices)
    bounds = [round(i * problem.blocks / count) for i in range(count + 1)]
    stages = tuple(Stage(d.name, a, b) for d, a, b in zip(problem.devices, bounds, bounds[1:], strict=False) if b > a)
    for stage, device in zip(stages, problem.devices, strict=False):
        if stage.end - stage.start > device.capacity:
            raise ValueError(f"{device.name} cannot hold an even share ({stage.end - stage.start} blocks)")
    return evaluate(problem, stages)


def problem_from_toml(text: str) -> tuple[Problem, str]:
    """A devices file (TOML) as a Problem and its objective; ValueError says what is wrong::

    blocks = 30              # the model's blocks
    message_bytes = 2304     # one token's hidden state on the wire (hidden size x 4 in fp32)
    objective = "latency"    # or "throughput"

    [[device]]
    name = "laptop"
    capacity = 12            # blocks that fit its memory (weights + KV reserve)
    block_ms = 6.0           # measured time of one block's decoding step there

    [[link]]                 # both directions; a missing link costs nothing
    between = ["client", "laptop"]
    latency_ms = 1.0
    bandwidth_mbps = 100     # optional: megabits per second
    """
    import tomllib

    try:
        raw = tomllib.loads(text)
        devices = tuple(
            Device(str(d["name"]), int(d["capacity"]), float(d["block_ms"]) / 1000) for d in raw.get("device", [])
        )
        links = {}
        for link in raw.get("link", []):
            a, b = (str(x) for x in link["between"])
            mbps = float(link.get("bandwidth_mbps", math.inf))
            links[(a, b)] = Link(float(link.get("latency_ms", 0.0)) / 1000, mbps * 1e6 / 8)
        problem = Problem(int(raw["blocks"]), devices, int(raw.get("message_bytes", 0)), links)
        objective = str(raw.get("objective", "latency"))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad devices file: {type(e).__name__}: {e}") from e
    names = [d.name for d in devices]
    if not devices or len(set(names)) != len(names):
        raise ValueError("bad devices file: it needs at least one [[device]], each with its own name")
    unknown = {n for pair in links for n in pair} - {CLIENT, *names}
    if unknown or problem.blocks < 1 or problem.message_bytes < 0 or objective not in OBJECTIVES:
        raise ValueError(f"bad devices file: unknown devices in links {sorted(unknown)}, or blocks < 1, "
                         f"or message_bytes < 0, or objective not one of {OBJECTIVES}")  # fmt: skip
    return problem, objective


@dataclass(frozen=True)
class Observed:
    """What a client knows of one node beyond its record: its measured round trip (own pings)
    and the time per block that clients measured in service (their shared observations)."""

    round_trip_s: float | None = None
    per_block_s: float | None = None


def problem_from_swarm(
    snapshot: SwarmSnapshot, observed: Mapping[str, Observed], message_bytes: int = 0
) -> tuple[Problem, dict[str, str]]:
    """A live swarm's ONLINE nodes as the planner's devices, and each device's peer id.

    - capacity: the blocks its memory budget holds (``NodeRecord.max_blocks``; a node that does
      not announce it counts as holding its current span only);
    - time per block: what clients measured in service, else the node's advertised throughput;
    - links: a client-node hop costs half the measured round trip; a hand-over between two
      nodes costs both halves, because the client relays every step (the default: with
      forwarding the nodes talk directly, over a distance no client measures).

    Devices are named by their public name when that is unique, else by their peer id.
    """
    records = sorted(snapshot.live((NodeState.ONLINE,)), key=lambda r: r.peer_id)
    public = [r.public_name for r in records]
    devices, links, peers, one_way = [], {}, {}, {}
    for record in records:
        seen = observed.get(record.peer_id, Observed())
        per_block = seen.per_block_s or (1.0 / record.inference_rps if record.inference_rps > 0 else None)
        if per_block is None:
            continue  # neither measured nor profiled: nothing to plan with
        unique = record.public_name and public.count(record.public_name) == 1 and record.public_name != CLIENT
        name = record.public_name if unique else record.peer_id
        devices.append(Device(name, record.max_blocks or record.num_blocks, per_block))
        peers[name] = record.peer_id
        one_way[name] = (seen.round_trip_s or 0.0) / 2
        links[(CLIENT, name)] = Link(one_way[name])
    for a, b in itertools.combinations(one_way, 2):
        links[(a, b)] = Link(one_way[a] + one_way[b])
    return Problem(snapshot.num_blocks, tuple(devices), message_bytes, links), peers


def problem_to_toml(problem: Problem, objective: str) -> str:
    """A devices file (:func:`problem_from_toml` reads it back) for ``join --plan``."""
    lines = [f"blocks = {problem.blocks}", f"message_bytes = {problem.message_bytes}", f'objective = "{objective}"']
    for d in problem.devices:
        lines += ["", "[[device]]", f"name = {_toml_string(d.name)}", f"capacity = {d.capacity}",
                  f"block_ms = {1000 * d.block_s:.6g}"]  # fmt: skip
    for (a, b), link in problem.links.items():
        lines += ["", "[[link]]", f"between = [{_toml_string(a)}, {_toml_string(b)}]",
                  f"latency_ms = {1000 * link.latency_s:.6g}"]  # fmt: skip
        if math.isfinite(link.bandwidth_bps):
            lines.append(f"bandwidth_mbps = {link.bandwidth_bps * 8 / 1e6:.6g}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_plan(problem: Problem, objective: str, best: Plan) -> str:
    """The plan as a table, with each device's ``swarmnode join --blocks`` flag."""
    by_name = {d.name: d for d in problem.devices}
    lines = [
        f"objective {objective}: {1000 * best.latency_s:.2f} ms per token end to end, "
        f"slowest stage {1000 * best.bottleneck_s:.2f} ms (at most {1 / best.bottleneck_s:.0f} tokens/s in a pipeline)"
    ]
    try:
        even = even_split(problem)
        lines.append(f"even split over all devices: {1000 * even.latency_s:.2f} ms per token, "
                     f"slowest stage {1000 * even.bottleneck_s:.2f} ms")  # fmt: skip
    except ValueError as e:
        lines.append(f"even split over all devices: impossible ({e})")
    width = max(len(n) for n in by_name)
    lines.append(f"{'device':<{width}}  {'blocks':>7}  {'compute ms':>10}  join with")
    for stage in best.stages:
        compute = 1000 * (stage.end - stage.start) * by_name[stage.device].block_s
        span = f"{stage.start}:{stage.end}"
        lines.append(f"{stage.device:<{width}}  {span:>7}  {compute:10.2f}  --blocks {span}")
    for name in by_name.keys() - {s.device for s in best.stages}:
        lines.append(f"{name:<{width}}  {'-':>7}  {'':>10}  (not used)")
    return "\n".join(lines)


def span_for(best: Plan, device: str) -> tuple[int, int]:
    """The span the plan gives ``device`` (ValueError if it leaves the device unused)."""
    for stage in best.stages:
        if stage.device == device:
            return stage.start, stage.end
    raise ValueError(f"the plan leaves {device!r} unused (it serves: {', '.join(s.device for s in best.stages)})")
