"""Inference sessions: one stream per hop, KV caches kept on the nodes across steps.

The session remembers every input it sent to each hop (``history``) so that a failed
hop can later be replaced and replayed (see DESIGN.md, "A generation step"); every
failure goes through :meth:`InferenceSession._hop_failed`, the one place where the
router hears of it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from hivemind.proto import runtime_pb2

from swarmnode.errors import NodeUnavailable, RemoteError, SessionClosed, SessionLengthExceeded
from swarmnode.net.protocol import make_request, read_response
from swarmnode.routing import Hop

if TYPE_CHECKING:
    from swarmnode.client.model import RemoteBlocks


@dataclass
class _HopStream:
    """The open rpc_inference stream of one hop."""

    hop: Hop
    requests: asyncio.Queue
    responses: AsyncIterator[runtime_pb2.ExpertResponse]
    history: list[torch.Tensor] = field(default_factory=list)  # every input sent, for replay
    cache_len_before: int = 0  # what the node reported for the last step
    step_times: list[float] = field(default_factory=list)  # round trips, seconds
    compute_times: list[float] = field(default_factory=list)  # the node's own compute, seconds


async def _queue_iter(queue: asyncio.Queue):
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


class InferenceSession:
    """A generation context: the nodes of its chain keep its KV cache between steps.

    Use through ``model.inference_session(max_length=...)`` as a context manager.
    ``step(hidden)`` sends new hidden states through the chain and returns the outputs
    of the last block. ``chain`` lists the hops in use.
    """

    def __init__(self, remote: RemoteBlocks, max_length: int):
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        self.remote = remote
        self.max_length = max_length
        self.session_id = uuid.uuid4().hex
        self.position = 0  # tokens already processed by every hop
        self.token_ids: torch.Tensor | None = None  # all tokens of this session, for generate()
        self.pending_ids: torch.Tensor | None = None  # generated tokens not yet sent through the chain
        self._streams: list[_HopStream] = []
        self._closed = False
        self._step = 0
        self.first_prefix_lengths: list[list[int]] = []  # per generate call: what each hop reported it held
        self.first_step_tokens: list[int] = []  # per generate call: tokens sent in its first step

    # ---- public ------------------------------------------------------------------------------------
    @property
    def chain(self) -> list[Hop]:
        return [s.hop for s in self._streams]

    @property
    def reported_prefix_lengths(self) -> list[int]:
        """The cached prefix length each hop reported for the last step."""
        return [s.cache_len_before for s in self._streams]

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send new hidden states [batch, seq, hidden] through the chain; returns the last block's output."""
        return self.remote.connection.run(self.step_async(hidden))

    async def step_async(self, hidden: torch.Tensor) -> torch.Tensor:
        """``step`` for code that runs on the client's event loop."""
        if self._closed:
            raise SessionClosed("this inference session is closed")
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {tuple(hidden.shape)}")
        if self.position + hidden.shape[1] > self.max_length:
            raise SessionLengthExceeded(
                f"session max_length is {self.max_length}: {self.position} tokens used, {hidden.shape[1]} more asked"
            )
        out = await self._step_async(hidden)
        self.position += hidden.shape[1]
        return out

    def close(self) -> None:
        """End the session: the nodes free its KV caches."""
        if not self._closed and self.remote.connection.loop.is_running():
            self.remote.connection.run(self.aclose(), timeout=10)
        self._closed = True

    async def aclose(self) -> None:
        """``close`` for code that runs on the client's event loop."""
        if self._closed:
            return
        self._closed = True
        await self._close_streams()

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------------
    async def _step_async(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self._streams:
            chain = await self.remote.find_chain()
            self._streams = [await self._open(hop) for hop in chain]
        self._step += 1
        for stream in self._streams:
            hidden = await self._run_hop(stream, hidden)
        return hidden

    async def _open(self, hop: Hop) -> _HopStream:
        queue: asyncio.Queue = asyncio.Queue()
        responses = await self.remote.connection.stub(hop.peer_id).rpc_inference(_queue_iter(queue))
        return _HopStream(hop, queue, responses)

    async def _run_hop(self, stream: _HopStream, hidden: torch.Tensor) -> torch.Tensor:
        hop = stream.hop
        meta = {"session_id": self.session_id, "step": self._step, "position": self.position}
        if not stream.history:
            meta.update(start=hop.start, end=hop.end, max_length=self.max_length)
        began = time.perf_counter()
        await stream.requests.put(make_request(meta, (hidden,)))
        try:
            async with asyncio.timeout(self.remote.config.request_timeout):  # no extra task, unlike wait_for
                response = await anext(stream.responses)
        except StopAsyncIteration:
            self._hop_failed(hop, NodeUnavailable("the node closed the stream", hop.peer_id))
        except TimeoutError:
            self._hop_failed(hop, NodeUnavailable("the node did not answer in time", hop.peer_id))
        except Exception as e:  # noqa: BLE001 - p2p errors surface with many types
            self._hop_failed(hop, NodeUnavailable(f"stream failed: {e}", hop.peer_id))
        try:
            meta_out, tensors = read_response(response, hop.peer_id)
        except RemoteError as e:
            self._hop_failed(hop, e)
        elapsed = time.perf_counter() - began
        stream.history.append(hidden)
        stream.cache_len_before = int(meta_out.get("cache_len_before", -1))
        stream.step_times.append(elapsed)
        stream.compute_times.append(float(meta_out.get("compute_ms", 0.0)) / 1000)
        self.remote.router.report_step(hop, elapsed, hidden.shape[1])
        return tensors[0]

    def _hop_failed(self, hop: Hop, error: BaseException):
        """Every hop failure passes here: the router learns of it, then the error surfaces."""
        self.remote.router.report_failure(hop, error)
        self._closed = True
        raise error

    async def _close_streams(self) -> None:
        for stream in self._streams:
            await stream.requests.put(None)
        for stream in self._streams:
            try:
                await asyncio.wait_for(stream.responses.aclose(), 2)
            except (TimeoutError, RuntimeError, ConnectionError):
                pass
