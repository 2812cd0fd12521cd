"""Every malformed request gets a clear error reply, and the node keeps serving."""

import asyncio
import time
import urllib.request
import uuid

import pytest
import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from swarmnode.errors import CacheExhausted, InvalidRequest, UnknownSession
from swarmnode.net.protocol import INFERENCE_HANDLE, make_request, pack_meta, read_response, tensor_to_proto
from swarmnode.net.stream import NodeStream

pytestmark = pytest.mark.swarm
HIDDEN = 64


def first_node(swarm):
    return next(p for p in swarm.processes if p.info.get("blocks") == "0:3")


async def exchange(connection, peer_id, requests):
    """Send requests one by one on one rpc_inference stream; collect (meta, tensors) or the error raised."""
    stream = await NodeStream.open(connection.p2p, peer_id)
    results = []
    for request in requests:
        await stream.send(request)
        try:
            results.append(read_response(await asyncio.wait_for(stream.recv(), 30), peer_id))
        except (InvalidRequest, UnknownSession) as e:
            results.append(e)
    await stream.close()
    return results


def step(meta, hidden):
    return make_request(meta, (hidden,))


def opening(**extra):
    return {"session_id": uuid.uuid4().hex, "start": 0, "end": 3, "max_length": 32, **extra}


def garbage_tensor_request():
    proto = tensor_to_proto(torch.zeros(1, 1, HIDDEN))
    proto.buffer = b"\x01\x02\x03"
    return runtime_pb2.ExpertRequest(metadata=pack_meta(opening()), tensors=[proto])


CASES = {
    "wrong hidden size": (step(opening(), torch.zeros(1, 2, 32)), "hidden size"),
    "wrong dtype": (step(opening(), torch.zeros(1, 2, HIDDEN, dtype=torch.int64)), "float32"),
    "wrong shape": (step(opening(), torch.zeros(2, HIDDEN)), "shape"),
    "empty sequence": (step(opening(), torch.zeros(1, 0, HIDDEN)), "empty"),
    "NaN": (step(opening(), torch.full((1, 1, HIDDEN), float("nan"))), "NaN"),
    "max_length zero": (step(opening(max_length=0), torch.zeros(1, 1, HIDDEN)), "max_length"),
    "max_length huge": (step(opening(max_length=10**9), torch.zeros(1, 1, HIDDEN)), "max_length"),
    "more tokens than max_length": (step(opening(max_length=4), torch.zeros(1, 5, HIDDEN)), "exceed"),
    "span outside the node": (step(opening(start=2, end=6), torch.zeros(1, 1, HIDDEN)), "not within"),
    "max_length not an int": (step(opening(max_length="lots"), torch.zeros(1, 1, HIDDEN)), "integer"),
    "exact not a boolean": (step(opening(exact="yes"), torch.zeros(1, 1, HIDDEN)), "boolean"),
    "garbage metadata": (
        runtime_pb2.ExpertRequest(metadata=b"\xc1\xc1garbage", tensors=[tensor_to_proto(torch.zeros(1, 1, HIDDEN))]),
        "msgpack",
    ),
    "garbage tensor bytes": (garbage_tensor_request(), "cannot decode tensor"),
    "no tensor": (runtime_pb2.ExpertRequest(metadata=pack_meta(opening())), "expected 1 tensor"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_gets_an_error_and_the_stream_still_works(llama_swarm, llama_client, case):
    request, message = CASES[case]
    peer = first_node(llama_swarm).info["peer_id"]
    good = step(opening(), torch.randn(1, 3, HIDDEN))
    bad_result, good_result = llama_client.connection.run(exchange(llama_client.connection, peer, [request, good]))
    assert isinstance(bad_result, InvalidRequest), bad_result
    assert message in str(bad_result)
    meta, (out,) = good_result
    assert out.shape == (1, 3, HIDDEN) and meta["cache_len"] == 3


def test_errors_inside_an_open_session(llama_swarm, llama_client):
    peer = first_node(llama_swarm).info["peer_id"]
    h = torch.randn(1, 2, HIDDEN)
    results = llama_client.connection.run(
        exchange(
            llama_client.connection,
            peer,
            [
                step(opening(max_length=6), h),  # opens: 2 cached
                step({"session_id": "other"}, h),  # another session's id on this stream
                step({"position": 5}, h),  # beyond the cached prefix
                step({}, torch.randn(2, 2, HIDDEN)),  # batch size changed
                step({}, torch.randn(1, 5, HIDDEN)),  # 2 + 5 > max_length 6
                step({}, h),  # still fine: 4 cached
                step({"position": 1}, h),  # roll back to 1 and replay: 3 cached
            ],
        )
    )
    assert results[0][0]["cache_len"] == 2
    assert [type(r) for r in results[1:5]] == [InvalidRequest] * 4
    assert "max_length" in str(results[4])
    assert results[5][0]["cache_len_before"] == 2 and results[5][0]["cache_len"] == 4
    assert results[6][0]["cache_len_before"] == 1 and results[6][0]["cache_len"] == 3


def test_unknown_session_is_reported(llama_swarm, llama_client):
    peer = first_node(llama_swarm).info["peer_id"]
    (result,) = llama_client.connection.run(
        exchange(llama_client.connection, peer, [step(opening(position=7), torch.randn(1, 1, HIDDEN))])
    )
    assert isinstance(result, UnknownSession)


def test_stateless_forward_rejects_bad_input(llama_swarm, llama_client):
    peer = first_node(llama_swarm).info["peer_id"]
    stub = llama_client.connection.stub(peer)
    bad = make_request({"start": 0, "end": 3}, (torch.zeros(1, 4, 7),))
    response = llama_client.connection.run(stub.rpc_forward(bad, timeout=30))
    with pytest.raises(InvalidRequest, match="hidden size"):
        read_response(response, peer)


def test_raw_garbage_bytes_on_the_wire_do_not_break_the_node(llama_swarm, llama_client, llama_reference):
    peer = first_node(llama_swarm).info["peer_id"]
    connection = llama_client.connection

    async def send_garbage():
        _, reader, writer = await connection.p2p.call_binary_stream_handler(PeerID.from_base58(peer), INFERENCE_HANDLE)
        await P2P.send_raw_data(b"\xff" * 64 + b"not a protobuf at all", writer)
        writer.close()

    connection.run(send_garbage())
    prompt = torch.tensor([[1, 2, 3, 4]])
    out = llama_client.generate(prompt, max_new_tokens=8)
    assert torch.equal(out, llama_reference.generate(prompt, max_new_tokens=8, do_sample=False))
    assert all(p.alive() for p in llama_swarm.processes)


def test_a_frame_declaring_a_huge_length_is_refused_before_it_is_read(llama_swarm, llama_client, llama_reference):
    """A frame header announcing 2**40 bytes: the node closes that stream at once (it does not
    try to buffer it) and serves everyone else."""
    peer = first_node(llama_swarm).info["peer_id"]
    connection = llama_client.connection

    async def send_huge_header() -> bytes:
        _, reader, writer = await connection.p2p.call_binary_stream_handler(PeerID.from_base58(peer), INFERENCE_HANDLE)
        writer.write(P2P.MESSAGE_MARKER + (1 << 40).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + b"\0" * 1024)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # EOF: the node closed the stream
        writer.close()
        return answer

    assert connection.run(send_huge_header(), timeout=30) == b""
    prompt = torch.tensor([[4, 3, 2, 1]])
    out = llama_client.generate(prompt, max_new_tokens=8)
    assert torch.equal(out, llama_reference.generate(prompt, max_new_tokens=8, do_sample=False))
    assert all(p.alive() for p in llama_swarm.processes)


def test_one_peer_cannot_hold_more_than_its_share(tmp_path, llama_path):
    """A node that lets each peer hold 2 sessions: the third from the same peer is refused
    (peer_limit), another peer still gets in, and closing frees the share."""
    from swarmnode.client.swarm import SwarmConnection
    from swarmnode.config import ClientConfig
    from swarmnode.launcher import LocalSwarm

    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        node = swarm.start_node(llama_path, "0:3", "--max-sessions-per-peer", "2")
        peer = node.info["peer_id"]
        greedy, other = (SwarmConnection(ClientConfig(initial_peers=tuple(swarm.initial_peers))) for _ in range(2))
        try:

            async def hold(count: int):
                streams, answers = [], []
                for _ in range(count):
                    stream = await NodeStream.open(greedy.p2p, peer)
                    await stream.send(step(opening(), torch.zeros(1, 1, HIDDEN)))
                    try:
                        answers.append(read_response(await asyncio.wait_for(stream.recv(), 30), peer))
                    except Exception as e:  # noqa: BLE001 - the refusal is what we look for
                        answers.append(e)
                    streams.append(stream)
                return streams, answers

            streams, answers = greedy.run(hold(3), timeout=60)
            assert isinstance(answers[0], tuple) and isinstance(answers[1], tuple)
            assert isinstance(answers[2], CacheExhausted) and "already holds 2 sessions" in str(answers[2])
            assert isinstance(other.run(exchange(other, peer, [step(opening(), torch.zeros(1, 1, HIDDEN))]))[0],
                              tuple)  # fmt: skip
            for stream in streams:
                greedy.run(stream.close())
            time.sleep(0.5)  # the node notices the closed streams
            assert isinstance(greedy.run(exchange(greedy, peer, [step(opening(), torch.zeros(1, 1, HIDDEN))]))[0],
                              tuple)  # fmt: skip
            metrics = urllib.request.urlopen(f"http://{node.info['metrics']}/metrics", timeout=5).read().decode()
            assert 'swarmnode_sessions_refused_total{reason="peer_limit"} 1.0' in metrics
        finally:
            greedy.close()
            other.close()
