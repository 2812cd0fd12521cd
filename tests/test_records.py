import dataclasses

import pytest

from swarmnode.records import (
    DeadVerdict,
    ModelRecord,
    NodeRecord,
    NodeState,
    SwarmSnapshot,
    model_id_from_name,
    servers_key,
    validate_model_id,
)


def _record(**kw):
    base = dict(peer_id="QmA", state=NodeState.ONLINE, start=2, end=5, inference_rps=100.0)
    return NodeRecord(**{**base, **kw})


def test_node_record_round_trip():
    record = _record(cache_tokens_left=1000, active_sessions=2, public_name="box")
    assert NodeRecord.from_wire(record.to_wire()) == record


def test_every_node_record_field_survives_the_wire():
    """A field added to the record but not to the parser's checks would turn every record into
    None (once, a new text field without a length limit did)."""
    values = {str: "QmSomething", int: 7, float: 0.5}
    changed = {f.name: values[type(f.default)] for f in dataclasses.fields(NodeRecord) if type(f.default) in values}
    changed |= {"peer_id": "QmA", "start": 2, "end": 6, "incarnation": 123, "v": 1, "slowdown": 2.5}
    record = _record(**changed)
    assert NodeRecord.from_wire(record.to_wire()) == record


def test_busy_fraction_is_tolerant():
    assert NodeRecord.from_wire(_record(busy=0.25).to_wire()).busy == 0.25
    older = {k: v for k, v in _record().to_wire().items() if k != "busy"}
    assert NodeRecord.from_wire(older).busy == -1.0  # not known
    for nonsense in (float("nan"), 7.0, -0.5):
        parsed = NodeRecord.from_wire(_record().to_wire() | {"busy": nonsense})
        assert parsed is not None and parsed.busy == -1.0
    assert NodeRecord.from_wire(_record().to_wire() | {"busy": "lots"}) is None


def test_slowdown_is_tolerant():
    assert NodeRecord.from_wire(_record(slowdown=1.75).to_wire()).slowdown == 1.75
    older = {k: v for k, v in _record().to_wire().items() if k != "slowdown"}
    assert NodeRecord.from_wire(older).slowdown == -1.0  # not known: routers use the busy fraction
    for nonsense in (float("nan"), float("inf"), 0.5, -3.0, 1e9):  # a step never takes less than its compute
        parsed = NodeRecord.from_wire(_record().to_wire() | {"slowdown": nonsense})
        assert parsed is not None and parsed.slowdown == -1.0
    assert NodeRecord.from_wire(_record().to_wire() | {"slowdown": True}) is None


def test_node_record_ignores_unknown_fields_from_newer_versions():
    wire = _record().to_wire() | {"v": 7, "gpu": "H100", "future": [1, 2]}
    parsed = NodeRecord.from_wire(wire)
    assert parsed is not None and parsed.v == 7 and parsed.start == 2


@pytest.mark.parametrize(
    "broken",
    [
        None,
        "text",
        [1, 2],
        {"peer_id": "QmA"},  # required fields missing
        {"peer_id": "QmA", "state": 99, "start": 0, "end": 1},  # unknown state
        {"peer_id": "QmA", "state": 3, "start": 5, "end": 2},  # empty span
        {"peer_id": "QmA", "state": 3, "start": "x", "end": 2},
        {"peer_id": 12, "state": 3, "start": 0, "end": 2},
        # numbers a hostile peer could use to win every route, every comparison, or overflow
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "inference_rps": float("inf")},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "inference_rps": float("nan")},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "prefill_rps": -1.0},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "timestamp": float("inf")},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "incarnation": (1 << 64) - 1},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "cache_tokens_left": -5},
        {"peer_id": "QmA", "state": 3.0, "start": 0, "end": 2},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 1 << 30},
        {"peer_id": "QmA" * 100, "state": 3, "start": 0, "end": 2},
        {"peer_id": "QmA", "state": 3, "start": 0, "end": 2, "version": "x" * 1000},
    ],
)
def test_bad_node_records_are_skipped_not_raised(broken):
    assert NodeRecord.from_wire(broken) is None


def test_model_record_round_trip_and_rejects_nonsense():
    record = ModelRecord("org--m", 32, "llama", "org/m", "abc")
    assert ModelRecord.from_wire(record.to_wire()) == record
    assert ModelRecord.from_wire({"model_id": "m", "num_blocks": 0, "family": "llama"}) is None
    assert ModelRecord.from_wire({"model_id": "m", "family": "llama"}) is None


def test_model_ids_are_dht_safe():
    assert model_id_from_name("meta-llama/Llama-2-7b-hf") == "meta-llama--Llama-2-7b-hf"
    assert model_id_from_name("/data/models/My Model 7B/") == "My-Model-7B"
    assert servers_key("m") == "m.servers"
    with pytest.raises(ValueError):
        validate_model_id("bad/id")


def test_snapshot_coverage():
    snap = SwarmSnapshot(
        "m",
        8,
        {
            "a": _record(peer_id="a", start=0, end=3),
            "b": _record(peer_id="b", start=3, end=5, state=NodeState.JOINING),
            "c": _record(peer_id="c", start=6, end=8),
        },
    )
    assert snap.uncovered() == [3, 4, 5]
    assert [r.peer_id for r in snap.serving(4, (NodeState.JOINING,))] == ["b"]


def test_dead_verdicts_are_bounded():
    assert DeadVerdict.from_wire({"peer_id": "QmA", "incarnation": 5, "reporter": "QmB"}) == DeadVerdict(
        "QmA", 5, "QmB"
    )
    for bad in ((1 << 64) - 1, -1, 2.5, True, "7"):
        assert DeadVerdict.from_wire({"peer_id": "QmA", "incarnation": bad}) is None


def test_a_node_is_dead_only_when_more_than_one_member_says_so():
    from swarmnode.records import corroborated_dead

    nodes = {p: _record(peer_id=p, incarnation=10) for p in ("a", "b", "c", "d")}
    nodes["gone"] = _record(peer_id="gone", state=NodeState.OFFLINE)

    def verdicts(*reporters, subject="a", incarnation=10):
        return [DeadVerdict(subject, incarnation, r) for r in reporters]

    assert corroborated_dead(nodes, verdicts("b")) == {}  # one member's word is not enough
    assert corroborated_dead(nodes, verdicts("b", "b")) == {}  # nor said twice
    assert corroborated_dead(nodes, verdicts("b", "c")) == {"a": 10}
    assert corroborated_dead(nodes, verdicts("b", "outsider")) == {}  # non-members do not count
    assert corroborated_dead(nodes, verdicts("b", "gone")) == {}  # nor nodes that left
    assert corroborated_dead(nodes, verdicts("b", "a")) == {}  # nor the subject itself
    assert corroborated_dead(nodes, verdicts("b", "c", incarnation=9)) == {}  # its newer record outranks them
    assert corroborated_dead(nodes, verdicts("b", "c", subject="nobody")) == {}
    pair = {p: nodes[p] for p in ("a", "b")}
    assert corroborated_dead(pair, verdicts("b")) == {"a": 10}  # the only other member suffices
