import asyncio

import msgpack
import pytest
import torch
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from swarmnode.errors import CacheExhausted, InvalidRequest, NodeBusy, RemoteError
from swarmnode.net.protocol import (
    error_response,
    make_response,
    read_response,
    receive_message,
    send_message,
    step_tensors,
    tensor_from_proto,
    tensor_to_proto,
    unpack_meta,
)


def test_metadata_round_trip_and_garbage():
    assert unpack_meta(msgpack.packb({"a": 1})) == {"a": 1}
    assert unpack_meta(b"") == {}
    with pytest.raises(InvalidRequest):
        unpack_meta(b"\xc1\xff\x00garbage")
    with pytest.raises(InvalidRequest, match="map"):
        unpack_meta(msgpack.packb([1, 2]))


def test_tensor_round_trip_and_garbage():
    t = torch.randn(1, 3, 8)
    assert torch.equal(step_tensors([tensor_to_proto(t)])[0], t)
    broken = tensor_to_proto(t)
    broken.buffer = b"\x00" * 5
    with pytest.raises(InvalidRequest, match="cannot decode"):
        step_tensors([broken])
    with pytest.raises(InvalidRequest, match="expected 1 tensor"):
        step_tensors([])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_tensors_travel_as_their_own_bytes(dtype):
    t = (torch.randn(2, 3, 5) * 4).to(dtype)
    proto = tensor_to_proto(t.transpose(1, 2))  # not contiguous: sent contiguous
    assert len(proto.buffer) == t.numel() * dtype.itemsize  # bfloat16: 2 bytes a value, not hivemind's 4
    back = tensor_from_proto(proto)
    assert back.dtype == dtype and torch.equal(back, t.transpose(1, 2))


def test_hivemind_legacy_bfloat16_and_malformed_tensors():
    from hivemind.compression import serialize_torch_tensor

    t = torch.randn(2, 4).to(torch.bfloat16)
    assert torch.equal(tensor_from_proto(serialize_torch_tensor(t)), t)  # 4 bytes a value: legacy form
    for dtype, size, buffer in [
        ("complex64", [2], bytes(16)),
        ("float32", [3], bytes(8)),
        ("float32", [2**31, 2**31], b""),
    ]:
        bad = runtime_pb2.Tensor(buffer=buffer, size=size, dtype=dtype)
        with pytest.raises(InvalidRequest, match="cannot decode"):
            tensor_from_proto(bad)
    assert tensor_from_proto(runtime_pb2.Tensor(size=[0, 4], dtype="float32")).shape == (0, 4)


def test_a_message_goes_out_as_one_write_and_reads_back():
    class Writer:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(bytes(data))

        async def drain(self):
            pass

    async def scenario():
        writer, sent = Writer(), make_response({"x": 1}, (torch.ones(3),))
        await send_message(sent, writer)
        await send_message(P2P.END_OF_STREAM, writer)
        assert len(writer.writes) == 2  # marker, length and body together: one send per message
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(writer.writes))
        message, error = await receive_message(reader, runtime_pb2.ExpertResponse, 1 << 20)
        assert message == sent and error is None
        assert await receive_message(reader, runtime_pb2.ExpertResponse, 1 << 20) == (None, P2P.END_OF_STREAM)

    asyncio.run(scenario())


def test_errors_travel_as_codes():
    response = error_response(CacheExhausted("full"))
    with pytest.raises(CacheExhausted, match="full") as info:
        read_response(response, "peer")
    assert info.value.peer_id == "peer"
    odd = runtime_pb2.ExpertResponse(metadata=msgpack.packb({"error": {"code": "new_code", "message": "m"}}))
    with pytest.raises(RemoteError):
        read_response(odd, "peer")
    meta, tensors = read_response(make_response({"x": 1}, (torch.ones(2),)), "peer")
    assert meta == {"x": 1} and torch.equal(tensors[0], torch.ones(2))


@pytest.mark.parametrize(
    "sent, received",
    [(3.5, 3.5), (-2, 0.0), (1e9, 3600.0), (float("nan"), None), (True, None), ("soon", None), (None, None)],
)
def test_a_retry_hint_travels_with_a_retryable_refusal_and_garbage_hints_are_dropped(sent, received):
    error = {"code": "node_busy", "message": "at capacity"}
    if sent is not None:
        error["retry_after"] = sent
    response = runtime_pb2.ExpertResponse(metadata=msgpack.packb({"error": error}))
    with pytest.raises(NodeBusy) as info:
        read_response(response, "peer")
    assert info.value.retryable and info.value.retry_after == received
    with pytest.raises(CacheExhausted) as info:  # a node's own error keeps its hint across the wire
        read_response(error_response(CacheExhausted("full", retry_after=5.0)), "peer")
    assert info.value.retry_after == 5.0 and info.value.retryable
    assert not InvalidRequest("x").retryable
    with pytest.raises(CacheExhausted) as info:  # no hint: it can never fit there
        read_response(error_response(CacheExhausted("bigger than the whole budget")), "peer")
    assert not info.value.retryable


def test_unary_rpcs_are_registered_as_unary():
    from swarmnode.net.protocol import SwarmNodeService

    SwarmNodeService._collect_rpc_handlers()
    kinds = {h.method_name: (h.stream_input, h.stream_output) for h in SwarmNodeService._rpc_handlers}
    assert kinds == {"rpc_forward": (False, False), "rpc_info": (False, False)}
