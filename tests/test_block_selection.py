import pytest

from swarmnode.errors import ConfigError
from swarmnode.records import NodeRecord, NodeState, SwarmSnapshot
from swarmnode.server.block_selection import (
    blocks_for_memory,
    check_blocks_fit,
    choose_span,
    parse_blocks,
    served_throughput,
)


def test_parse_blocks():
    assert parse_blocks("auto", 8).auto
    assert parse_blocks("3", 8).count == 3
    assert parse_blocks("2:5", 8).span == (2, 5)
    for bad in ("0", "9", "5:2", "0:9", "a:b", "x"):
        with pytest.raises(ConfigError):
            parse_blocks(bad, 8)


def test_blocks_for_memory():
    assert blocks_for_memory(10_000, 2_000, 1_000, 8) == 3
    assert blocks_for_memory(10**9, 2_000, 1_000, 8) == 8  # never more than the model has
    with pytest.raises(ConfigError, match="cannot hold one block"):
        blocks_for_memory(2_500, 2_000, 1_000, 8)


def test_an_explicit_span_that_does_not_fit_is_refused_with_the_numbers():
    check_blocks_fit(3, 9 << 20, 2 << 20, 1 << 20, "--max-memory")  # 3 x 3 MiB: fits exactly
    with pytest.raises(ConfigError) as info:
        check_blocks_fit(4, 9 << 20, 2 << 20, 1 << 20, "--max-memory")
    message = str(info.value)
    for part in ("4 blocks need 12.0 MiB", "2.0 MiB of weights", "1.0 MiB of KV cache", "9.0 MiB (--max-memory)"):
        assert part in message, message
    assert "3 fit" in message


def test_choose_span_prefers_least_served_window():
    assert choose_span([0.0] * 8, 3) == (0, 3)
    assert choose_span([5, 5, 5, 0, 0, 0, 0, 0], 3) == (3, 6)
    assert choose_span([5, 5, 5, 5, 5, 5, 0, 0], 3) == (5, 8)
    assert choose_span([3, 9, 9, 9, 2, 2, 2, 9], 3) == (4, 7)  # weakest block decides, then total


def test_nodes_joining_one_after_another_cover_all_blocks():
    nodes: dict[str, NodeRecord] = {}
    for i in range(3):
        snapshot = SwarmSnapshot("m", 8, dict(nodes))
        start, end = choose_span(served_throughput(snapshot), 3)
        # JOINING nodes count too, so a node still loading is not piled onto
        nodes[f"n{i}"] = NodeRecord(f"n{i}", NodeState.JOINING, start, end)
    covered = set()
    for r in nodes.values():
        covered.update(range(r.start, r.end))
    assert covered == set(range(8))


def test_served_throughput_ignores_offline_and_self():
    snap = SwarmSnapshot(
        "m",
        4,
        {
            "a": NodeRecord("a", NodeState.ONLINE, 0, 2, inference_rps=10),
            "b": NodeRecord("b", NodeState.OFFLINE, 2, 4, inference_rps=10),
            "me": NodeRecord("me", NodeState.ONLINE, 0, 4, inference_rps=10),
        },
    )
    assert served_throughput(snap, exclude="me") == [10, 10, 0, 0]


def test_a_one_block_node_fills_a_gap_rather_than_doubling_a_covered_block():
    served = [5.0, 5.0, 0.0, 5.0, 5.0, 5.0, 5.0, 0.5]  # block 7 covered by a slow node, block 2 by none
    assert choose_span(served, 1) == (2, 3)


def test_four_half_model_nodes_joining_one_after_another_give_every_block_two_replicas():
    nodes: dict[str, NodeRecord] = {}
    for i in range(4):
        start, end = choose_span(served_throughput(SwarmSnapshot("m", 8, dict(nodes))), 4)
        nodes[f"n{i}"] = NodeRecord(f"n{i}", NodeState.JOINING, start, end)
    replicas = [sum(r.serves(b) for r in nodes.values()) for b in range(8)]
    assert replicas == [2] * 8
