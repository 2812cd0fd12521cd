"""The hand-over of generated tokens from the client's loop to the caller's thread
(swarmnode.client.streaming.AheadStream), and a node stream's receive timeouts
(swarmnode.net.stream.NodeStream.recv), without a swarm."""

import asyncio
import threading
import time

import pytest
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from swarmnode.client.streaming import AheadStream
from swarmnode.errors import NodeUnavailable
from swarmnode.net.stream import NodeStream


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def counting(made: list[int], finished: list[bool], limit: int = 100, fail_at: int | None = None):
    async def items():
        try:
            for i in range(limit):
                if i == fail_at:
                    raise ValueError("generation failed")
                made.append(i)
                yield i
                await asyncio.sleep(0)
        finally:
            finished.append(True)

    return items()


def test_items_arrive_in_order_and_the_end_is_seen(loop):
    made, finished = [], []
    stream = AheadStream(loop, counting(made, finished, limit=5))
    got = []
    while True:
        more, item = stream.get()
        if not more:
            break
        got.append(item)
    assert got == [0, 1, 2, 3, 4] and stream.get() == (False, None)
    assert stream.close(5) == 0 and finished == [True]


def test_the_generator_runs_ahead_at_most_lookahead_items_and_stops_at_a_boundary(loop):
    made, finished = [], []
    stream = AheadStream(loop, counting(made, finished), lookahead=3)
    assert stream.get() == (True, 0)
    time.sleep(0.2)  # a slow caller: the generator must wait for it
    assert stream.produced - stream.taken == 3 and len(made) == 1 + 3 + 1  # one more made, held back
    unread = stream.close(5)
    assert unread == 4 and finished == [True]  # its finally ran on the loop before close returned


def test_a_failure_reaches_the_caller(loop):
    stream = AheadStream(loop, counting([], [], fail_at=2))
    assert stream.get() == (True, 0) and stream.get() == (True, 1)
    with pytest.raises(ValueError, match="generation failed"):
        stream.get()
    assert stream.close(5) == 0


def test_closing_before_the_first_item_runs_nothing(loop):
    made, finished = [], []
    gate = threading.Event()
    loop.call_soon_threadsafe(gate.wait, 5)  # hold the loop until the stream is closed
    stream = AheadStream(loop, counting(made, finished))
    stream._stop = True  # what close() sets first
    gate.set()
    assert stream.close(5) == 0 and made == [] and finished == []  # never started: no finally to run


def frame(response: runtime_pb2.ExpertResponse) -> bytes:
    data = response.SerializeToString()
    return P2P.MESSAGE_MARKER + len(data).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + data


class _Writer:
    def close(self) -> None:
        pass


def test_a_late_answer_is_a_timeout_that_leaves_the_stream_usable():
    async def scenario():
        reader = asyncio.StreamReader()
        stream = NodeStream("peer", reader, _Writer())
        with pytest.raises(TimeoutError):
            await stream.recv(timeout=0.05, frame_timeout=1)
        assert not stream.closed
        reader.feed_data(frame(runtime_pb2.ExpertResponse(metadata=b"\x80")))
        response = await stream.recv(timeout=0.05, frame_timeout=1)
        assert response.metadata == b"\x80"

    asyncio.run(scenario())


def test_a_response_that_stalls_halfway_breaks_the_stream():
    async def scenario():
        reader = asyncio.StreamReader()
        stream = NodeStream("peer", reader, _Writer())
        reader.feed_data(frame(runtime_pb2.ExpertResponse(metadata=b"\x80"))[:5])
        with pytest.raises(NodeUnavailable, match="stalled"):
            await stream.recv(timeout=1, frame_timeout=0.05)
        assert stream.closed
        reader.feed_eof()

    asyncio.run(scenario())
