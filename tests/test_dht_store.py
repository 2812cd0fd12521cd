"""Records reach the DHT process in messages small enough for its command pipe, and a view of
a model is read in three keys, keeping only records their node signed (no swarm)."""

import asyncio
import pickle
import time
from concurrent.futures import Future

from cryptography.hazmat.primitives.asymmetric import rsa

from swarmnode.net.dht import MAX_STORE_MESSAGE_BYTES, fetch_snapshot, store_records
from swarmnode.net.identity import Identity
from swarmnode.records import NodeRecord, NodeState, dead_key, observations_key, servers_key

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


def test_many_records_are_stored_in_pipe_sized_messages():
    identity = Identity(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    record = NodeRecord(identity.peer_id, NodeState.ONLINE, 0, 30, inference_rps=100.0).to_wire()
    items = [(servers_key(f"m{b}"), identity.peer_id, record) for b in range(30)]  # a node serving 30 models
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


class FakeReadDHT:
    """Answers ``get_subkeys`` from a dict {key: {subkey: envelope}}, noting the keys asked for."""

    def __init__(self, stored: dict):
        self.stored, self.asked = stored, []

    def run_coroutine(self, coro, return_future: bool = False):
        keys = coro.keywords["keys"]
        self.asked.append(keys)
        future = Future()
        future.set_result({key: dict(self.stored.get(key, {})) for key in keys})
        return _Awaitable(future)


def test_a_view_of_a_30_block_model_reads_three_keys_and_keeps_only_self_signed_records():
    node, other, forger = (Identity(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for _ in range(3))
    first = NodeRecord(node.peer_id, NodeState.ONLINE, 0, 15, timestamp=time.time()).to_wire()
    second = NodeRecord(other.peer_id, NodeState.ONLINE, 15, 30, timestamp=time.time()).to_wire()
    hijack = NodeRecord(other.peer_id, NodeState.OFFLINE, 0, 30, timestamp=time.time() + 1).to_wire()
    too_long = NodeRecord(forger.peer_id, NodeState.ONLINE, 0, 31, timestamp=time.time()).to_wire()
    key = servers_key("m")
    dht = FakeReadDHT(
        {
            key: {
                node.peer_id: node.seal(key, node.peer_id, first),
                other.peer_id: forger.seal(key, other.peer_id, hijack),  # about another node: ignored
                forger.peer_id: forger.seal(key, forger.peer_id, too_long),  # beyond the model's 30 blocks
                "spare": other.seal(key, "spare", second),  # a subkey that is not its signer's
            }
        }
    )
    snapshot = asyncio.run(fetch_snapshot(dht, "m", 30))
    assert dht.asked == [[key, dead_key("m"), observations_key("m")]]  # whatever the block count
    assert set(snapshot.nodes) == {node.peer_id}
    assert (snapshot.nodes[node.peer_id].start, snapshot.nodes[node.peer_id].end) == (0, 15)
