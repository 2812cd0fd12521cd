"""Which blocks a joining node serves: pure functions over a swarm snapshot.

``--blocks auto``: the count comes from the memory budget; the position is the
consecutive span whose blocks are least served right now. An explicit count or span is
checked against the same budget (:func:`check_blocks_fit`). "Served" is the sum of the
advertised inference throughput of live nodes (JOINING nodes count too, so nodes
joining one after another do not pile onto the same span).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarmnode.errors import ConfigError
from swarmnode.records import NodeState, SwarmSnapshot

_LIVE = (NodeState.JOINING, NodeState.ONLINE)
_UNPROFILED_RPS = 1.0  # weight of a node that has not measured itself yet


@dataclass(frozen=True)
class BlocksRequest:
    """A parsed --blocks value: 'auto', a count, or an exact span."""

    count: int | None = None  # None with span None means auto
    span: tuple[int, int] | None = None

    @property
    def auto(self) -> bool:
        return self.count is None and self.span is None


def parse_blocks(text: str, num_blocks: int) -> BlocksRequest:
    """Parse ``auto``, ``N`` or ``START:END`` against a model of ``num_blocks`` blocks."""
    text = str(text).strip()
    if text == "auto":
        return BlocksRequest()
    if re.fullmatch(r"\d+", text):
        count = int(text)
        if not 1 <= count <= num_blocks:
            raise ConfigError(f"--blocks {count}: the model has {num_blocks} blocks")
        return BlocksRequest(count=count)
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match:
        start, end = int(match.group(1)), int(match.group(2))
        if not 0 <= start < end <= num_blocks:
            raise ConfigError(f"--blocks {text}: need 0 <= START < END <= {num_blocks}")
        return BlocksRequest(span=(start, end))
    raise ConfigError(f"--blocks must be auto, a count N or START:END, got {text!r}")


def blocks_for_memory(budget_bytes: int, block_bytes: int, cache_bytes_per_block: int, num_blocks: int) -> int:
    """How many blocks fit in ``budget_bytes`` with their KV-cache reserve (at least 1)."""
    per_block = block_bytes + cache_bytes_per_block
    if budget_bytes < per_block:
        raise ConfigError(
            f"memory budget of {budget_bytes / 2**20:.1f} MiB cannot hold one block "
            f"({per_block / 2**20:.1f} MiB with its KV cache): raise --max-memory or lower --cache-tokens"
        )
    return min(num_blocks, budget_bytes // per_block)


def check_blocks_fit(count: int, budget_bytes: int, block_bytes: int, cache_bytes_per_block: int, why: str) -> None:
    """Refuse ``count`` blocks (an explicit ``--blocks N`` or ``START:END``) that do not fit in
    ``budget_bytes`` with their KV-cache reserve, with the numbers; ``why`` says where the
    budget came from."""
    per_block = block_bytes + cache_bytes_per_block
    if count * per_block > budget_bytes:
        fits = budget_bytes // per_block
        raise ConfigError(
            f"{count} blocks need {count * per_block / 2**20:.1f} MiB ({block_bytes / 2**20:.1f} MiB of weights + "
            f"{cache_bytes_per_block / 2**20:.1f} MiB of KV cache each) but the memory budget is "
            f"{budget_bytes / 2**20:.1f} MiB ({why}): {fits} fit; serve fewer blocks, raise --max-memory "
            f"or lower --cache-tokens"
        )


def served_throughput(snapshot: SwarmSnapshot, exclude: str | None = None) -> list[float]:
    """Per block, the summed inference throughput of live nodes (except ``exclude``)."""
    served = [0.0] * snapshot.num_blocks
    for record in snapshot.live(_LIVE):
        if record.peer_id == exclude:
            continue
        rps = record.inference_rps if record.inference_rps > 0 else _UNPROFILED_RPS
        for block in range(record.start, min(record.end, snapshot.num_blocks)):
            served[block] += rps
    return served


def choose_span(served: list[float], count: int) -> tuple[int, int]:
    """The window of ``count`` blocks whose weakest block is least served.

    Ties go to the window with the least total service, then to the leftmost.
    """
    if not 1 <= count <= len(served):
        raise ValueError(f"cannot place {count} blocks on a model of {len(served)} blocks")
    best = min(
        range(len(served) - count + 1),
        key=lambda s: (min(served[s : s + count]), sum(served[s : s + count]), s),
    )
    return best, best + count


@dataclass(frozen=True)
class Move:
    """A span change that raises the swarm's weakest block: from ``old`` to ``new``, with the
    weakest block's throughput before and after (tokens/s, summed over its nodes)."""

    old: tuple[int, int]
    new: tuple[int, int]
    weakest_before: float
    weakest_after: float


def _with_span(served: list[float], span: tuple[int, int], rps: float) -> list[float]:
    return [x + rps if span[0] <= block < span[1] else x for block, x in enumerate(served)]


def plan_move(
    snapshot: SwarmSnapshot, peer_id: str, span: tuple[int, int], rps: float, margin: float = 0.2
) -> Move | None:
    """Whether a ``--blocks auto`` node serving ``span`` at ``rps`` should move, and where to.

    The node takes itself out of the picture, places its span where a joining node would
    (:func:`choose_span`), and moves only if (1) no block that is served now would be left
    without any node (moving never opens a gap) and (2) it covers blocks no node serves, or
    else the weakest block's throughput rises by more than the ``margin`` fraction. The margin
    is the hysteresis: every move either shrinks the gaps or raises the swarm's minimum by a
    fixed factor, so a sequence of moves ends, and two nodes cannot take turns moving onto
    each other's blocks.
    """
    if not 0 <= margin:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rps = rps if rps > 0 else _UNPROFILED_RPS
    others = served_throughput(snapshot, exclude=peer_id)
    target = choose_span(others, span[1] - span[0])
    if target == span:
        return None
    before, after = _with_span(others, span, rps), _with_span(others, target, rps)
    if any(b > 0 and a <= 0 for b, a in zip(before, after, strict=True)):
        return None
    weakest_before, weakest_after = min(before), min(after)
    fills_gap = after.count(0.0) < before.count(0.0)
    if not fills_gap and weakest_after <= weakest_before * (1 + margin):
        return None
    return Move(span, target, weakest_before, weakest_after)
