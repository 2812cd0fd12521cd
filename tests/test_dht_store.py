"""Records reach the DHT process in messages small enough for its command pipe (no swarm)."""

import asyncio
import pickle
from concurrent.futures import Future

from cryptography.hazmat.primitives.asymmetric import rsa

from swarmnode.net.dht import MAX_STORE_MESSAGE_BYTES, store_records
from swarmnode.net.identity import Identity
from swarmnode.records import NodeRecord, NodeState, block_key

PIPE_ONE_WRITE_BYTES = 16 * 1024  # multiprocessing writes larger messages as a header, then a body


class FakeDHT:
    """Records what ``run_coroutine`` would send down hivemind's command pipe."""

    def __init__(self, stored: bool = True):
        self.messages: list[bytes] = []
        self.stored = stored

    def run_coroutine(self, coro, return_future: bool = False):
        self.messages.append(pickle.dumps(("_run_coroutine", [], {"coro": coro})))
        future = Future()
        future.set_result(self.stored)
        return _Awaitable(future)


class _Awaitable:
    """An MPFuture's two faces: awaitable and result(timeout)."""

    def __init__(self, future: Future):
        self.future = future

    def __await__(self):
        return asyncio.wrap_future(self.future).__await__()

    def result(self, timeout=None):
        return self.future.result(timeout)


def test_a_long_span_is_announced_in_pipe_sized_messages():
    identity = Identity(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    record = NodeRecord(identity.peer_id, NodeState.ONLINE, 0, 30, inference_rps=100.0).to_wire()
    items = [(block_key("m", b), identity.peer_id, record) for b in range(30)]
    dht = FakeDHT()
    result = store_records(dht, identity, items, ttl=30)
    assert len(dht.messages) > 1  # 30 signed records do not fit one message
    assert all(len(m) < PIPE_ONE_WRITE_BYTES for m in dht.messages)
    assert MAX_STORE_MESSAGE_BYTES < PIPE_ONE_WRITE_BYTES
    sent = [item for m in dht.messages for item in pickle.loads(m)[2]["coro"].keywords["items"]]
    assert [(k, s) for k, s, _ in sent] == [(k, s) for k, s, _ in items]  # every record, in order
    assert result.result(5) is True and asyncio.run(_wait(result)) is True
    assert store_records(FakeDHT(stored=False), identity, items[:2], ttl=30).result(5) is False


async def _wait(result):
    return await result
