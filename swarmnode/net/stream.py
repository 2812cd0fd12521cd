"""A client's rpc_inference stream to one node, framed exactly like hivemind's protobuf
streams but driven directly: one write per request, one read per response.

Unlike ``P2P.iterate_protobuf_handler``, a connection that closes (the node died) or an
error the node's RPC layer sends surfaces at once from :meth:`NodeStream.recv`, and no
background writer task is left waiting on a request iterator.
"""

from __future__ import annotations

import asyncio

from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from swarmnode.errors import InvalidRequest, NodeUnavailable, RemoteError
from swarmnode.net.protocol import INFERENCE_HANDLE, MAX_RESPONSE_BYTES, receive_message, send_message


class NodeStream:
    """An open rpc_inference stream: ``send`` requests, ``recv`` responses, ``close``."""

    def __init__(self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.peer_id = peer_id
        self._reader, self._writer = reader, writer
        self.closed = False

    @classmethod
    async def open(cls, p2p: P2P, peer_id: str, handle: str = INFERENCE_HANDLE) -> NodeStream:
        try:
            _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), handle)
        except Exception as e:  # noqa: BLE001 - the daemon reports dial failures with several types
            raise NodeUnavailable(f"cannot open a stream: {e}", peer_id) from e
        return cls(peer_id, reader, writer)

    async def send(self, request: runtime_pb2.ExpertRequest) -> None:
        if self.closed:
            raise NodeUnavailable("the stream is closed", self.peer_id)
        try:
            await send_message(request, self._writer)
        except (ConnectionError, OSError, RuntimeError) as e:
            self.closed = True
            raise NodeUnavailable(f"the connection broke: {e}", self.peer_id) from e

    async def recv(
        self, timeout: float | None = None, frame_timeout: float | None = None
    ) -> runtime_pb2.ExpertResponse:
        """The next response. TimeoutError if none has begun within ``timeout`` seconds: nothing
        was consumed and the stream stays usable (call again to wait on). A response that begins
        but is not whole within ``frame_timeout`` breaks the stream (NodeUnavailable).

        Waiting needs no task of its own: this runs on every hop of every token."""
        marker = None
        try:
            async with asyncio.timeout(timeout):
                marker = await self._reader.readexactly(1)  # cancelled while waiting: nothing is consumed
            async with asyncio.timeout(frame_timeout):
                response, error = await receive_message(
                    self._reader, runtime_pb2.ExpertResponse, MAX_RESPONSE_BYTES, marker
                )
        except TimeoutError as e:  # (an OSError too: caught first)
            if marker is None:
                raise  # nothing has begun: the stream is intact
            self.closed = True
            raise NodeUnavailable("the node sent part of a response and stalled", self.peer_id) from e
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self.closed = True
            raise NodeUnavailable("the node closed the stream", self.peer_id) from e
        except InvalidRequest as e:  # an oversized or garbled frame: nothing after it can be trusted
            self.closed = True
            raise RemoteError(f"the node sent a bad frame: {e}", self.peer_id) from e
        if error is not None:
            self.closed = True
            raise RemoteError(f"the node's RPC layer failed: {error.message}", self.peer_id)
        return response

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await send_message(P2P.END_OF_STREAM, self._writer)
        except (ConnectionError, OSError, RuntimeError):
            pass
        self._writer.close()
