"""The node's RPC handlers: decode and validate requests, run blocks, answer.

Every failure caused by a request becomes an error response; the node keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from hivemind.p2p import P2PContext
from hivemind.proto import runtime_pb2

from swarmnode.errors import (
    InvalidRequest,
    ModelMismatch,
    NodeAtCapacity,
    NodeBusy,
    NodeInternalError,
    NodeUnavailable,
    PeerLimitExceeded,
    RemoteError,
    Unauthorized,
    UnknownSession,
    UpstreamMissing,
)
from swarmnode.membership.ratelimit import RateLimiter
from swarmnode.net.protocol import (
    MAX_METADATA_BYTES,
    PROTOCOL_VERSION,
    error_response,
    make_response,
    read_requests,
    send_message,
    step_tensors,
    unpack_meta,
)
from swarmnode.net.push import Pusher
from swarmnode.net.swarmkey import SwarmKey
from swarmnode.records import NodeState
from swarmnode.server.admission import Admission, Load, peer_share
from swarmnode.server.backend import BlockBackend
from swarmnode.server.busy import BusyMeter, SlowdownMeter
from swarmnode.server.cache import CacheManager, Session
from swarmnode.server.inbox import Inbox
from swarmnode.server.metrics import NodeMetrics
from swarmnode.server.scheduler import StepResult, StepScheduler

logger = logging.getLogger(__name__)
MAX_FORWARD_TOKENS = 8192
MAX_AWAIT_S = 300.0  # the longest a forwarded step waits for its input


@dataclass(frozen=True)
class PeerLimits:
    """What one peer (an authenticated peer id) may hold on this node."""

    max_sessions: int = 64
    max_cache_share: float = 0.5  # of the KV budget, in block-tokens
    max_requests_per_s: float = 200.0  # session opens and unary RPCs


def _int_field(meta: dict, name: str, default: int | None = None) -> int:
    value = meta.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"metadata field {name!r} must be an integer, got {value!r}")
    return value


class NodeHandler:
    """Implements :class:`swarmnode.net.protocol.SwarmNodeService` for one node."""

    def __init__(
        self,
        backend: BlockBackend,
        scheduler: StepScheduler,
        admission: Admission | None,
        caches: CacheManager,
        info_fn: Callable[[], dict],
        state_fn: Callable[[], NodeState],
        session_idle_timeout: float = 600.0,
        config_hash: str = "",
        metrics: NodeMetrics | None = None,
        limits: PeerLimits = PeerLimits(),
        swarm_key: SwarmKey | None = None,
        misreport: bool = False,
        network_delay_s: float = 0.0,
        pusher: Pusher | None = None,
    ):
        # TESTING AID (--debug-network-delay-ms): hold every answer to a client this long, so that
        # a local swarm has near and far nodes (this kernel has no netem). Gossip is not delayed.
        self.network_delay_s = network_delay_s
        self.pusher = pusher  # forwarding: our outputs straight to the next hop (None: never forward)
        self.inbox = Inbox()  # forwarding: inputs pushed to us, matched with the steps awaiting them
        self.limits = limits
        # TESTING AID (--debug-misreport): claim to be idle and fast (busy 0, compute ~0) whatever the
        # truth, as a node lying for traffic would. Routers must not believe it (docs/security.md).
        self.misreport = misreport
        self.swarm_key = swarm_key  # a private swarm: every caller proves it holds the key
        self.rate = RateLimiter(limits.max_requests_per_s, burst=max(1.0, limits.max_requests_per_s))
        self._held: dict[str, set[str]] = {}  # peer id → its open session ids
        self.config_hash = config_hash  # of the checkpoint this node serves
        self.metrics = metrics or NodeMetrics(lambda: {})  # a private registry when none is given
        self.backend, self.scheduler, self.caches = backend, scheduler, caches
        self.admission = admission  # the step-time check (None: the KV budget alone decides)
        self.info_fn, self.state_fn = info_fn, state_fn
        self.session_idle_timeout = session_idle_timeout
        self.sessions_done = asyncio.Event()
        self.sessions_done.set()
        self._streams = 0
        self.busy = BusyMeter()  # reported with every step and in the node's record
        self.slowdown = SlowdownMeter()  # likewise: the load signal routers prefer (time in node / compute)
        # The largest request frame read at all: MAX_FORWARD_TOKENS fp32 hidden states (batch × tokens in
        # all) plus metadata. Checked before a byte of the message is read.
        self.frame_limit = (4 * backend.hidden_size + 16) * MAX_FORWARD_TOKENS + MAX_METADATA_BYTES + (1 << 16)

    async def rpc_info(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertResponse:
        peer = str(context.remote_id)
        try:
            self._check_rate(peer)
            if self.swarm_key is not None:  # the token travels hex-encoded in the request's uid
                try:
                    token = bytes.fromhex(request.uid)
                except ValueError:
                    token = None
                self._authorize(peer, token)
        except RemoteError as e:
            return self._error(e)
        if self.network_delay_s:
            await asyncio.sleep(self.network_delay_s)
        return make_response(self.info_fn())

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            self._check_rate(str(context.remote_id))
            return await self._stateless(unpack_meta(request.metadata), request.tensors, str(context.remote_id))
        except RemoteError as e:
            return self._error(e)

    async def _stateless(self, meta: dict, tensors, peer: str) -> runtime_pb2.ExpertResponse:
        """A forward without a session (the caller has checked the peer's rate): unary
        ``rpc_forward``, or a stream's first request with ``stateless: true`` (no unary message
        limit: clients' stateless forwards come this way). No KV cache is kept."""
        self._authorize(peer, meta.get("auth"))
        self._check_model(meta)
        start, end = self._span(meta)
        hidden, mask, positions = step_tensors(tensors)
        self.backend.check_hidden(hidden, MAX_FORWARD_TOKENS)
        self.backend.check_padding(mask, positions, hidden)
        result = await self._run(hidden, start, end, None, mask, positions)
        self._observe("forward", result, hidden)
        return make_response({"step": meta.get("step"), "compute_ms": 1000 * result.compute_s}, (result.output,))

    async def _awaited(self, session: Session, meta: dict, peer: str):
        """A forwarded step's input: pushed by the peer the client names (the previous hop) or by
        the client itself; UpstreamMissing if none arrives in time."""
        upstream, wait_s = meta.get("input_from"), meta.get("await_s", 30.0)
        if not isinstance(upstream, str) or len(upstream) > 128:
            raise InvalidRequest("a forwarded step names the peer its input comes from (input_from)")
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not 0 < wait_s <= MAX_AWAIT_S:
            raise InvalidRequest(f"await_s must be a number of seconds in (0, {MAX_AWAIT_S}]")
        step = _int_field(meta, "step")
        try:
            return await self.inbox.wait(session.session_id, step, frozenset({upstream, peer}), float(wait_s))
        except TimeoutError:
            raise UpstreamMissing(
                f"the input of step {step} did not arrive from {upstream} within {wait_s} s"
            ) from None

    async def handle_push_stream(self, stream_info, reader, writer) -> None:
        """Serve one push stream (see swarmnode.net.push): deliver each pushed input to the inbox."""
        sender = str(stream_info.peer_id)
        try:
            async for request in read_requests(reader, self.frame_limit):
                meta = unpack_meta(request.metadata)
                session_id, step = meta.get("session_id"), meta.get("step")
                if not isinstance(session_id, str) or isinstance(step, bool) or not isinstance(step, int):
                    raise InvalidRequest("a push names its session_id and step")
                hidden, mask, _ = step_tensors(request.tensors)
                if mask is not None:
                    raise InvalidRequest("a push carries hidden states only")
                self.inbox.deliver(sender, session_id, step, hidden)
        except (ConnectionError, OSError, RemoteError) as e:
            logger.debug("push stream from %s ended: %s", sender, e)
        finally:
            writer.close()

    async def handle_inference_stream(self, stream_info, reader, writer) -> None:
        """Serve one raw rpc_inference stream (see swarmnode.net.protocol.INFERENCE_HANDLE)."""
        try:
            requests = read_requests(reader, self.frame_limit)
            async for response in self.rpc_inference(requests, None, peer=str(stream_info.peer_id)):
                if self.network_delay_s:
                    await asyncio.sleep(self.network_delay_s)
                await send_message(response, writer)
        except (ConnectionError, OSError, RemoteError) as e:
            logger.debug("inference stream ended: %s", e)
        finally:
            writer.close()

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext | None, peer: str = ""
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        peer = str(context.remote_id) if context is not None else peer
        session: Session | None = None
        self._streams += 1
        self.sessions_done.clear()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.session_idle_timeout):  # no extra task, unlike wait_for
                        request = await anext(requests)
                except (StopAsyncIteration, TimeoutError):
                    return  # client closed the stream, or went silent for too long
                received = time.perf_counter()
                opening = session is None
                try:
                    meta = unpack_meta(request.metadata)
                    if session is None and meta.get("stateless") is True:
                        self._check_rate(peer)
                        yield await self._stateless(meta, request.tensors, peer)
                        continue
                    if meta.get("await") is True:  # forwarding: the input comes from the previous hop
                        if session is None:
                            raise InvalidRequest(
                                "a forwarded step needs an open session: send the first with its input"
                            )
                        hidden, mask, positions = await self._awaited(session, meta, peer), None, None
                    else:
                        hidden, mask, positions = step_tensors(request.tensors)
                    if session is None:
                        session = self._open_session(meta, hidden, peer)
                    response = await self._step(session, meta, hidden, mask, positions, received)
                except RemoteError as e:
                    if opening and session is not None:  # its first step failed: as if never opened
                        self._close_session(session, peer)
                        session = None
                    if session is None:
                        self.metrics.sessions_refused.labels(_refusal_reason(e)).inc()
                    yield self._error(e)
                    if session is None and not isinstance(e, InvalidRequest):
                        return  # the session cannot be admitted here: nothing more to do
                    continue
                except Exception as e:  # noqa: BLE001 - a bug of ours: say so and end the stream, never go silent
                    logger.exception("inference stream of %s failed", peer)
                    yield self._error(NodeInternalError(f"the node failed: {type(e).__name__}: {e}"))
                    return
                yield response
        finally:
            if session is not None:
                self._close_session(session, peer)
            self._streams -= 1
            if self._streams == 0:
                self.sessions_done.set()

    def _check_share(self, peer: str, cost: int) -> None:
        """One peer may not hold more than its share: strangers share this node."""
        held = self._held.get(peer, set())
        if len(held) >= self.limits.max_sessions:
            raise PeerLimitExceeded(
                f"this peer already holds {len(held)} sessions here (limit {self.limits.max_sessions})",
                retry_after=5.0,
            )
        reserved = sum(self.caches.reserved(sid) for sid in held)
        longest = self.caches.max_session_length * (self.backend.end - self.backend.start)
        share = peer_share(self.caches.budget, self.limits.max_cache_share, longest)
        if reserved + cost > share:
            raise PeerLimitExceeded(
                f"this peer would hold {reserved + cost} block-tokens of KV cache here, above its share of {share}",
                retry_after=5.0 if cost <= share else None,  # retryable once its own sessions end, if ever
            )

    def _close_session(self, session: Session, peer: str) -> None:
        self.caches.close(session.session_id)
        self._release(peer, session.session_id)

    def _release(self, peer: str, session_id: str) -> None:
        held = self._held.get(peer)
        if held is not None:
            held.discard(session_id)
            if not held:
                del self._held[peer]

    def _announced(self, cache) -> bool:
        """Whether a session's blocks lie within the span this node announces now."""
        return self.backend.start <= cache.start and cache.end <= self.backend.end

    def sessions_outside(self, start: int, end: int) -> int:
        """How many open sessions use blocks outside [start, end) (a span this node moves to)."""
        return sum(1 for cache in self.caches.open_caches() if cache.start < start or cache.end > end)

    def _span(self, meta: dict) -> tuple[int, int]:
        start = _int_field(meta, "start", self.backend.start)
        end = _int_field(meta, "end", self.backend.end)
        self.backend.check_span(start, end)
        return start, end

    def _check_model(self, meta: dict) -> None:
        theirs = meta.get("config_hash")
        if theirs is not None and self.config_hash and theirs != self.config_hash:
            raise ModelMismatch(
                f"checkpoints differ: this node serves config hash {self.config_hash}, the client has {theirs!r}"
            )

    def _check_rate(self, peer: str) -> None:
        """Session opens and unary RPCs of one peer stay within its rate."""
        if not self.rate.allow(peer):
            raise NodeBusy("too many requests from this peer: slow down", retry_after=1.0)

    def _authorize(self, peer: str, token: object) -> None:
        if self.swarm_key is not None and not self.swarm_key.admits(peer, token):
            raise Unauthorized("this node serves a private swarm: start with its --swarm-key")

    def _open_session(self, meta: dict, hidden, peer: str) -> Session:
        self._check_rate(peer)
        self._authorize(peer, meta.get("auth"))
        if self.state_fn() != NodeState.ONLINE:
            raise NodeUnavailable(f"node is {self.state_fn().name}: not accepting new sessions")
        self._check_model(meta)
        start, end = self._span(meta)
        max_length = _int_field(meta, "max_length")
        if not 0 < max_length <= self.caches.max_session_length:
            raise InvalidRequest(f"max_length must be in 1..{self.caches.max_session_length}, got {max_length}")
        session_id = meta.get("session_id") or uuid.uuid4().hex
        if not isinstance(session_id, str) or len(session_id) > 128:
            raise InvalidRequest("session_id must be a string of at most 128 characters")
        if _int_field(meta, "position", 0) != 0:
            # A stream that starts past position 0 claims a session this node should already hold.
            raise UnknownSession(f"no session {session_id!r} on this node: open it from position 0")
        self.backend.check_hidden(hidden, max_length)
        self._check_share(peer, hidden.shape[0] * max_length * (end - start))
        if self.admission is not None:
            self.admission.check(self.caches.active_sessions, self._load() if self.admission.queued else None)
        exact = meta.get("exact", False)
        if not isinstance(exact, bool):
            raise InvalidRequest(f"metadata field 'exact' must be a boolean, got {exact!r}")
        session = self.caches.open(session_id, start, end, hidden.shape[0], max_length)
        session.exact = exact
        self._held.setdefault(peer, set()).add(session_id)
        self.metrics.sessions_opened.inc()
        logger.debug("opened session %s for blocks %d:%d, max_length %d", session_id, start, end, max_length)
        return session

    async def _step(
        self, session: Session, meta: dict, hidden, mask, positions, received: float
    ) -> runtime_pb2.ExpertResponse:
        cache = session.cache
        if meta.get("session_id", session.session_id) != session.session_id:
            raise InvalidRequest(f"this stream serves session {session.session_id}, not {meta.get('session_id')!r}")
        start, end = _int_field(meta, "start", cache.start), _int_field(meta, "end", cache.end)
        if (start, end) != (cache.start, cache.end):
            raise InvalidRequest(f"session was opened for blocks {cache.start}:{cache.end}, not {start}:{end}")
        if not self.backend.holds(start, end):  # this node moved and freed them: the client moves too
            raise NodeUnavailable(f"this node no longer serves blocks {start}:{end}")
        self.backend.check_hidden(hidden, cache.max_length)
        self.backend.check_padding(mask, positions, hidden)
        if hidden.shape[0] != cache.batch:
            raise InvalidRequest(f"session has batch size {cache.batch}, got {hidden.shape[0]}")
        position = _int_field(meta, "position", cache.length)
        if not 0 <= position <= cache.length:
            raise InvalidRequest(f"position {position} is beyond the {cache.length} cached tokens")
        if position + hidden.shape[1] > cache.max_length:
            raise InvalidRequest(
                f"session max_length {cache.max_length} exceeded: {position} cached + {hidden.shape[1]} new tokens"
            )
        forward = _forward_target(meta)
        cache.rollback(position)
        before = cache.length
        session.returns.arrived(received)
        result = await self._run(hidden, start, end, cache, mask, positions, session.exact)
        session.returns.answered(time.perf_counter())
        forwarded = False
        if forward is not None and self.pusher is not None:  # the next hop needs it first: push, then answer
            peer_id, session_id, step = forward
            forwarded = await self.pusher.push(peer_id, {"session_id": session_id, "step": step}, result.output)
        self._observe("decode" if hidden.shape[1] == 1 else "prefill", result, hidden)
        if hidden.shape[1] == 1:
            self.slowdown.add(result.queue_s + result.compute_s, result.compute_s)
        compute_ms = 1000 * result.compute_s if not self.misreport else 0.01
        return make_response(
            {
                "cache_len_before": before,
                "cache_len": cache.length,
                "step": meta.get("step"),
                "compute_ms": compute_ms,  # the blocks themselves (a batched step: the whole batch)
                "queue_ms": 1000 * result.queue_s,  # waiting for the compute thread
                "batch": result.batch,  # sessions that shared the forward
                "node_ms": 1000 * (time.perf_counter() - received),  # request decoded to response built
                **self.load_signals(),  # what routers learn load from
                # Clients move before the node leaves, or before it frees the blocks of a span it moved from.
                "draining": self.state_fn() == NodeState.DRAINING or not self._announced(cache),
                "forwarded": forwarded,  # pushed to the next hop as asked (else the client relays)
            },
            (result.output,),
        )

    def load_signals(self) -> dict[str, float]:
        """The node's load as it reports it with every step and in its record: its busy fraction
        and its slowdown (-1: no decoding step in the window)."""
        if self.misreport:  # TESTING AID: a node claiming to be idle
            return {"busy": 0.0, "slowdown": 1.0}
        slowdown = self.slowdown.mean()
        return {"busy": self.busy.fraction(), "slowdown": -1.0 if slowdown is None else slowdown}

    def _load(self) -> Load:
        """What admission projects a queueing node's steps from: how long its sessions stay away between steps."""
        return Load(self.caches.away_s(time.perf_counter()))

    def _observe(self, kind: str, result: StepResult, hidden) -> None:
        self.metrics.observe_step(kind, result.compute_s / result.batch, hidden.shape[0] * hidden.shape[1])

    def _error(self, error: RemoteError):
        self.metrics.errors.labels(error.code).inc()
        return error_response(error)

    async def _run(self, hidden, start: int, end: int, cache, mask=None, positions=None, exact=False) -> StepResult:
        began = time.perf_counter()
        try:
            return await self.scheduler.submit(hidden, start, end, cache, mask, positions, exact)
        except RemoteError:
            raise
        except (RuntimeError, ValueError) as e:
            logger.exception("compute failed")
            raise NodeInternalError(f"compute failed: {e}") from e
        finally:
            self.busy.add(began, time.perf_counter())


def _forward_target(meta: dict) -> tuple[str, str, int] | None:
    """``meta["forward"]``, checked: (next hop's peer id, its session id, the step), or None."""
    forward = meta.get("forward")
    if forward is None:
        return None
    if not isinstance(forward, dict):
        raise InvalidRequest("forward must be a map of peer, session_id and step")
    peer, session_id, step = forward.get("peer"), forward.get("session_id"), forward.get("step")
    if not isinstance(peer, str) or not isinstance(session_id, str) or len(peer) > 128 or len(session_id) > 128:
        raise InvalidRequest("forward names the next hop's peer and session_id (strings)")
    if isinstance(step, bool) or not isinstance(step, int):
        raise InvalidRequest("forward names the step (an integer)")
    return peer, session_id, step


def _refusal_reason(error: RemoteError) -> str:
    """A bounded label for why a session was not admitted."""
    if isinstance(error, PeerLimitExceeded):
        return "peer_limit"
    if isinstance(error, NodeAtCapacity):
        return "at_capacity"
    if isinstance(error, Unauthorized):
        return "unauthorized"
    return {
        "node_busy": "rate_limited",
        "cache_exhausted": "cache_exhausted",
        "node_unavailable": "not_online",
        "model_mismatch": "model_mismatch",
    }.get(error.code, "invalid_request")


def node_info(**fields) -> dict:
    """The rpc_info payload: protocol version plus the given fields."""
    return {"protocol": PROTOCOL_VERSION, **fields}
