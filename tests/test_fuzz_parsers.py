"""Property-based fuzzing of every parser a remote peer can reach: whatever arrives, the
parser returns a value or raises its one documented error, never anything else, and never
allocates without bound. Case counts are printed by hypothesis' statistics (-s)."""

from __future__ import annotations

import asyncio
import tracemalloc

import msgpack
import torch
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmnode.errors import InvalidRequest, RemoteError
from swarmnode.membership.swim import Membership, Update
from swarmnode.monitor.health import model_health
from swarmnode.net.identity import SignedRecordValidator, open_envelope
from swarmnode.net.protocol import read_response, receive_message, step_tensors, tensor_to_proto, unpack_meta
from swarmnode.records import DeadVerdict, ModelRecord, NodeRecord, SwarmSnapshot
from swarmnode.routing.stigmergy import aggregate

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# msgpack-able values of any shape: what a hostile peer can put in metadata or a record
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 64), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        k: values
        for k in (
            "peer_id",
            "state",
            "start",
            "end",
            "inference_rps",
            "prefill_rps",
            "busy",
            "cache_tokens_left",
            "active_sessions",
            "timestamp",
            "incarnation",
            "version",
            "model_id",
            "num_blocks",
            "family",
            "reporter",
            "v",
        )
    },  # fmt: skip
)


def packable(value) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None


@FUZZ
@given(st.one_of(values, record_like))
def test_record_parsers_return_a_record_or_none(raw):
    for cls in (NodeRecord, ModelRecord, DeadVerdict):
        parsed = cls.from_wire(raw)
        assert parsed is None or isinstance(parsed, cls)
        if isinstance(parsed, NodeRecord):
            assert 0 <= parsed.start < parsed.end and parsed.inference_rps < float("inf")


@FUZZ
@given(st.binary(max_size=256) | values.map(lambda v: packable(v) or b""))
def test_metadata_decodes_to_a_dict_or_invalid_request(raw):
    try:
        assert isinstance(unpack_meta(raw), dict)
    except InvalidRequest:
        pass


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=64), st.lists(st.integers(0, (1 << 32) - 1), max_size=5),
                          st.sampled_from(["float32", "float16", "int64", "bool", "bogus", ""]),
                          st.sampled_from(["NONE", "FLOAT16", "MEANSTD_16BIT", "QUANTILE_8BIT", "BLOCKWISE_8BIT"])),
                max_size=4))  # fmt: skip
def test_tensors_decode_or_raise_invalid_request_without_allocating_what_they_claim(specs):
    protos = []
    for buffer, size, dtype, compression in specs:
        proto = tensor_to_proto(torch.zeros(1))
        proto.buffer, proto.dtype = buffer, dtype
        del proto.size[:]
        proto.size.extend(size)
        proto.compression = runtime_pb2.CompressionType.Value(compression)
        protos.append(proto)
    tracemalloc.start()
    try:
        step_tensors(protos)
    except InvalidRequest:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # a declared size of 2**40 elements is never allocated


@FUZZ
@given(st.binary(max_size=200), st.lists(st.binary(max_size=64), max_size=3))
def test_responses_decode_or_raise_remote_error(metadata, buffers):
    response = runtime_pb2.ExpertResponse(metadata=metadata)
    for buffer in buffers:
        proto = tensor_to_proto(torch.zeros(2))
        proto.buffer = buffer
        response.tensors.append(proto)
    try:
        meta, tensors = read_response(response, "peer")
        assert isinstance(meta, dict)
    except RemoteError:
        pass


@FUZZ
@given(st.binary(max_size=64), st.integers(0, (1 << 64) - 1))
def test_stream_frames_are_bounded_before_they_are_read(body, declared):
    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(P2P.MESSAGE_MARKER + declared.to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + body)
        reader.feed_eof()
        return await receive_message(reader, runtime_pb2.ExpertRequest, limit=1024)

    try:
        asyncio.run(read())
    except (InvalidRequest, asyncio.IncompleteReadError):
        pass


@FUZZ
@given(st.text(max_size=20), st.one_of(st.none(), st.integers(-(1 << 70), 1 << 70)), st.lists(values, max_size=20))
def test_gossip_messages_never_break_membership(sender, incarnation, raw_updates):
    m = Membership("me", 1_800_000_000_000, suspicion_timeout=1.0, now_ms=lambda: 1_800_000_000_000)
    m.add_seed("a", 1_700_000_000_000)
    updates = [u for u in (Update.from_wire(r) for r in raw_updates) if u is not None]
    for who in (sender, "a"):
        m.receive(who, incarnation, updates)
    assert m.incarnation < 1 << 53
    assert all(0 <= member.incarnation < 1 << 53 for member in m.members.values())
    m.tick()


@FUZZ
@given(st.dictionaries(st.text(max_size=10), values, max_size=5))
def test_shared_observations_aggregate_without_error(published):
    view = aggregate(published, {}, skip_publisher=None, clamp=10.0, sessions_cap=8)
    for estimate in view.estimates.values():
        assert estimate.per_block_s is None or estimate.per_block_s > 0


@FUZZ
@given(values, st.text(max_size=20), st.binary(max_size=64), st.binary(max_size=64))
def test_signed_envelopes_and_the_dht_validator_reject_garbage(value, subkey, key, raw_value):
    assert open_envelope("k", subkey, value) is None or isinstance(value, dict)
    record = DHTRecord(key=key, subkey=packable(subkey) or b"", value=packable(value) or raw_value, expiration_time=0)
    assert SignedRecordValidator().validate(record) is False  # nothing unsigned is ever stored


@settings(max_examples=300, deadline=None)
@given(st.lists(record_like, max_size=6))
def test_a_snapshot_of_any_records_summarises(raws):
    nodes = {r.peer_id: r for r in (NodeRecord.from_wire(raw) for raw in raws) if r is not None and r.end <= 8}
    health = model_health(SwarmSnapshot("m", 8, nodes), ModelRecord("m", 8, "llama"), now=0.0)
    assert len(health.replicas) == 8 and 0.0 <= health.coverage <= 1.0
