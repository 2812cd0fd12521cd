"""Inference sessions: one stream per hop, KV caches kept on the nodes across steps, and
failover that keeps the output token-for-token identical.

The session keeps every input it sent to each hop (``history``). When a hop fails (an
error, a closed stream, or no answer within an adaptive step timeout), only that hop's
span is re-routed; its history is replayed to the replacement chain, chunk by chunk as it
was first sent (so the replacement computes exactly what the failed node did) and the
step goes on. A node that announces it is draining is left the same way, without a ban.
Every failure passes through :meth:`InferenceSession._on_hop_failure`, the one place
where the router hears of it.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from swarmnode.client.forwarding import Forwarding
from swarmnode.client.spotcheck import SpotChecks
from swarmnode.client.steps import StepInput
from swarmnode.client.trace import HopTrace, StepTrace, ms_since
from swarmnode.client.verify import due
from swarmnode.errors import (
    InvalidRequest,
    NodeUnavailable,
    RemoteError,
    SessionClosed,
    SessionLengthExceeded,
    VerificationFailed,
)
from swarmnode.models import DTYPES
from swarmnode.net.protocol import make_request, read_response
from swarmnode.net.stream import NodeStream
from swarmnode.routing import Hop
from swarmnode.routing.stigmergy import is_number

if TYPE_CHECKING:
    from swarmnode.client.model import RemoteBlocks
    from swarmnode.client.spotcheck import Checker

logger = logging.getLogger(__name__)
RECENT_STEPS = 16
PROBE_FLOOR_S = 0.25  # a late hop's liveness probe waits at least this long for an answer...
PROBE_PINGS = 5  # ...or this many of the node's measured round trips, if longer (up to ping_timeout)


def hop_output(response, peer_id: str, sent: StepInput) -> tuple[dict, torch.Tensor]:
    """A hop's answer, checked before anyone uses it: exactly one tensor, of the shape that was
    sent, a float dtype, all finite. Anything else is that node's failure (RemoteError), so the
    session fails over instead of passing garbage to the next node."""
    meta, tensors = read_response(response, peer_id)
    if len(tensors) != 1:
        raise RemoteError(f"node returned {len(tensors)} tensors instead of 1", peer_id)
    (out,) = tensors
    if out.shape != sent.hidden.shape:
        raise RemoteError(f"node returned shape {tuple(out.shape)} for {tuple(sent.hidden.shape)}", peer_id)
    if out.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RemoteError(f"node returned dtype {out.dtype}", peer_id)
    if not torch.isfinite(out).all():
        raise RemoteError("node returned NaN or infinite hidden states", peer_id)
    return meta, out


@dataclass
class _HopState:
    """One open hop of the chain."""

    hop: Hop
    stream: NodeStream | None = None  # opened on first use, so a dead node fails like any step...
    opening: asyncio.Task | None = None  # ...or ahead of it, while the hops before it compute
    history: list[StepInput] = field(default_factory=list)  # every input sent, for replay
    cache_len_before: int = 0  # what the node reported for the last step
    step_times: list[float] = field(default_factory=list)  # round trips, seconds
    compute_times: list[float] = field(default_factory=list)  # the node's own compute, seconds
    draining: bool = False
    stream_id: str = ""  # the id the node keeps this hop's cache under
    unchecked: dict[int, torch.Tensor] = field(default_factory=dict)  # outputs since the last spot-check
    checker: Checker | None = None  # the replica chain kept in step for spot-checks

    @property
    def sent_tokens(self) -> int:
        return sum(h.tokens for h in self.history)

    def truncate(self, tokens: int) -> None:
        """Forget the inputs after the first ``tokens`` tokens (the node rolls back on the next step)."""
        kept, total = [], 0
        for inp in self.history:
            if total + inp.tokens > tokens:
                if tokens > total:
                    kept.append(inp.head(tokens - total))
                break
            kept.append(inp)
            total += inp.tokens
        # Outputs of inputs that were cut (or cut short) were never part of the kept history.
        self.unchecked = {i: out for i, out in self.unchecked.items() if i < len(kept) and kept[i] is self.history[i]}
        self.history = kept


@dataclass(frozen=True)
class FailoverEvent:
    """A hop that was replaced: when, why, and by what."""

    at: float
    failed: Hop
    reason: str
    replacement: tuple[Hop, ...]
    replayed_tokens: int
    seconds: float


class InferenceSession(SpotChecks, Forwarding):
    """A generation context: the nodes of its chain keep its KV cache between steps.

    Use through ``model.inference_session(max_length=...)`` as a context manager.
    ``step(hidden)`` sends new hidden states through the chain and returns the outputs
    of the last block. ``chain`` lists the hops in use; ``failovers`` what was replaced.
    """

    def __init__(self, remote: RemoteBlocks, max_length: int, stateless: bool = False):
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        self.remote = remote
        self.max_length = max_length
        self.stateless = stateless  # one step, no KV cache on the nodes (RemoteBlocks.forward)
        self.session_id = uuid.uuid4().hex
        self.position = 0  # tokens already processed by every hop
        self.token_ids: torch.Tensor | None = None  # all tokens of this session, for generate()
        self.pending_ids: torch.Tensor | None = None  # generated tokens not yet sent through the chain
        self.attention_mask: torch.Tensor | None = None  # of token_ids, once a padded prompt came
        self.config_hash = getattr(remote, "config_hash", "")  # nodes with another checkpoint refuse
        self.failovers: list[FailoverEvent] = []
        self.first_prefix_lengths: list[list[int]] = []  # per generate call: what each hop reported it held
        self.first_step_tokens: list[int] = []  # per generate call: tokens sent in its first step
        self._hops: list[_HopState] = []
        self._closed = False
        self._step = 0
        self._refused_by: set[str | None] = set()  # nodes that answered invalid_request
        self._distrusted: set[str] = set()  # nodes a spot-check found wrong: never used again by this session
        self.verification = {"checked": 0, "disagreed": 0, "skipped": 0}
        self.forwarded_hops = 0  # hop outputs that went straight to the next hop (forwarding)
        self._streams_opened = 0
        self._released = False  # our hold on the chain's nodes was given back to the router
        self.tracing = False  # record a StepTrace per step (scripts/bench_token_budget.py)
        self.traces: list[StepTrace] = []
        self.trace: StepTrace | None = None  # the step in progress, when tracing

    # ---- public ------------------------------------------------------------------------------------
    @property
    def chain(self) -> list[Hop]:
        return [h.hop for h in self._hops]

    @property
    def closed(self) -> bool:
        """Whether the session has ended (closed, or failed for good)."""
        return self._closed

    @property
    def reported_prefix_lengths(self) -> list[int]:
        """The cached prefix length each hop reported for the last step."""
        return [h.cache_len_before for h in self._hops]

    def step(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Send new hidden states [batch, seq, hidden] through the chain; returns the last block's output.

        For a padded batch, ``mask`` [batch, seq] marks the real tokens (0 = padding) and
        ``positions`` [batch, seq] gives their position ids; both or neither.
        """
        return self.remote.connection.run(self.step_async(hidden, mask, positions))

    def rollback(self, tokens: int) -> None:
        """Keep only the first ``tokens`` tokens of this session's history.

        Tokens the nodes already hold beyond that are dropped on the next step (its
        ``position`` tells them where to continue); generated tokens not yet sent are
        dropped at once. For ``generate``, the last kept token becomes pending again (the
        next step needs its output). The chat CLI uses this when a re-rendered conversation
        diverges from what the session holds.
        """
        held = self.token_ids.shape[1] if self.token_ids is not None else self.position
        if not 0 <= tokens <= held:
            raise ValueError(f"cannot keep {tokens} tokens: the session holds {held}")
        on_nodes = min(tokens, self.position)
        if self.token_ids is not None and on_nodes == tokens and tokens > 0:
            # generate() continues from the output of the last kept token: send that token again.
            on_nodes = tokens - 1
        for state in self._hops:
            state.truncate(on_nodes)
        self.position = on_nodes
        if self.token_ids is not None:
            self.token_ids = self.token_ids[:, :tokens]
            pending = self.token_ids[:, self.position :]
            self.pending_ids = pending if pending.shape[1] else None
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[:, :tokens]

    async def step_async(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``step`` for code that runs on the client's event loop."""
        if (mask is None) != (positions is None):
            raise ValueError("pass both mask and positions, or neither")
        if self._closed:
            raise SessionClosed("this inference session is closed")
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {tuple(hidden.shape)}")
        if self.position + hidden.shape[1] > self.max_length:
            raise SessionLengthExceeded(
                f"session max_length is {self.max_length}: {self.position} tokens used, {hidden.shape[1]} more asked"
            )
        wire = DTYPES[self.remote.config.wire_dtype]  # 16-bit halves the bytes of every hop's message
        try:
            out = await self._step_async(StepInput(hidden.to(wire), mask, positions))
        except BaseException:
            self._closed = True  # a step that failed for good leaves the nodes' caches inconsistent
            await self._close_streams()
            raise
        self.position += hidden.shape[1]
        return out.to(hidden.dtype)

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

    # ---- one step ---------------------------------------------------------------------------------
    async def _step_async(self, step: StepInput) -> torch.Tensor:
        if self._hops and step.tokens <= 1:
            return await self._run_step(step)
        # A prompt (the first step, or any of several tokens) runs with the client's background
        # work held back: a DHT read beside it costs every process on the machines it reaches,
        # and the prompt uses every core of its nodes (client/background.py).
        work = self.remote.connection.work
        work.hold()
        try:
            return await self._run_step(step)
        finally:
            work.release()

    async def _run_step(self, step: StepInput) -> torch.Tensor:
        trace = self.trace = StepTrace(step.tokens) if self.tracing else None
        if not self._hops:
            began = time.perf_counter()
            self._hops = [self._new_state(hop) for hop in await self.remote.find_chain()]
            self.remote.router.hold(self.chain)
            for state in self._hops[1:]:  # the first hop opens at once; the others meanwhile
                state.opening = asyncio.ensure_future(NodeStream.open(self.remote.connection.p2p, state.hop.peer_id))
            if trace is not None:
                trace.route_ms = ms_since(began)
                self.traces.append(trace)
        elif trace is not None:
            self.traces.append(trace)
        self._step += 1
        if self._forwards():
            step = await self._forward_step(step)
        else:
            index = 0
            while index < len(self._hops):
                step = step.with_hidden(await self._relay_at(index, step))
                index += 1
        for index in reversed(range(len(self._hops))):
            if self._hops[index].draining:  # the node is leaving: move before it does
                await self._replace(index, None)
        return step.hidden

    async def _relay_at(self, index: int, step: StepInput) -> torch.Tensor:
        """Run ``step`` on hop ``index`` through this client (relay); a hop that fails is
        replaced (its span re-routed, its history replayed) and the step runs on the first hop
        of the replacement, which is then hop ``index``. Returns that hop's output."""
        while True:
            state = self._hops[index]
            try:
                out = await self._run_hop(state, step)
                fraction = self.remote.config.verify_fraction
                if fraction > 0:
                    state.unchecked[len(state.history) - 1] = out
                    if due(len(state.history), fraction):
                        await self._verify(state)
                return out
            except VerificationFailed as error:
                state.history.pop()  # this step runs again on the replacement
                await self._replace(index, error)
            except (NodeUnavailable, RemoteError) as error:
                self._check_refusal(error)
                await self._replace(index, error)  # then run this step on the replacement

    async def _open(self, hop: Hop) -> _HopState:
        state = self._new_state(hop)
        state.stream = await NodeStream.open(self.remote.connection.p2p, hop.peer_id)
        return state

    def _new_state(self, hop: Hop) -> _HopState:
        # One id per hop stream: after a failover, one node may hold two spans of this session.
        self._streams_opened += 1
        return _HopState(hop, stream_id=f"{self.session_id}.{self._streams_opened}")

    def _request(self, state: _HopState, step: StepInput, position: int, extra: dict | None = None):
        """A step's request to a hop; with ``extra["await"]`` it carries no input (forwarding:
        the previous hop pushes it)."""
        meta = {"session_id": state.stream_id, "step": self._step, "position": position, **(extra or {})}
        if self.stateless:
            meta["stateless"] = True
        if position == 0:
            meta.update(start=state.hop.start, end=state.hop.end, max_length=self.max_length)
            if self.remote.config.exact:
                meta["exact"] = True
            self.remote.connection.identity.authenticate(meta)  # a private swarm: prove we hold its key
            if self.config_hash:
                meta["config_hash"] = self.config_hash
        return make_request(meta, () if meta.get("await") else step.tensors())

    async def _run_hop(self, state: _HopState, step: StepInput) -> torch.Tensor:
        trace = self.trace
        if state.stream is None:
            opening = time.perf_counter()
            if state.opening is not None:  # opened ahead: a failure to open shows here, as a step's
                task, state.opening = state.opening, None
                state.stream = await task
            else:
                state.stream = await NodeStream.open(self.remote.connection.p2p, state.hop.peer_id)
            if trace is not None:
                trace.open_ms += ms_since(opening)
        began = time.perf_counter()
        request = self._request(state, step, state.sent_tokens)
        built = time.perf_counter()
        await self._send(state, request)
        response = await self._answer(state, self._step_timeout(state, step.tokens))
        received = time.perf_counter()
        meta, out = hop_output(response, state.hop.peer_id, step)
        elapsed = time.perf_counter() - began
        self._record(state, step, meta, elapsed)
        if trace is not None:
            trace.hops.append(_hop_trace(meta, began, built, received, elapsed))
        return out

    async def _send(self, state: _HopState, request) -> None:
        delay_ms = self.remote.config.debug_network_delay_ms  # TESTING AID: a far client
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        await state.stream.send(request)

    def _record(self, state: _HopState, step: StepInput, meta: dict, elapsed: float) -> None:
        """A hop answered ``step``: keep the input for replay, and what it took for routing."""
        state.history.append(step)
        state.cache_len_before = int(meta.get("cache_len_before", -1))
        state.step_times.append(elapsed)
        state.compute_times.append(float(meta.get("compute_ms", 0.0)) / 1000)
        state.draining = bool(meta.get("draining", False))
        busy, slowdown, node_ms = meta.get("busy"), meta.get("slowdown"), meta.get("node_ms")
        node_s = node_ms / 1000 if is_number(node_ms) else None  # remote input: the router checks the rest
        self.remote.router.report_step(
            state.hop, elapsed, step.tokens, state.compute_times[-1], busy, slowdown, node_seconds=node_s
        )

    async def _answer(self, state: _HopState, timeout: float):
        """The hop's answer to the step just sent. Each time ``timeout`` passes without it, the
        node is asked whether it is alive (:meth:`Pinger.alive`): one that answers is busy, not
        dead, and we wait on, up to ``request_timeout`` in all; one that does not has failed."""
        cfg, peer = self.remote.config, state.hop.peer_id
        began = time.monotonic()
        while True:
            try:
                return await state.stream.recv(timeout, cfg.request_timeout)
            except TimeoutError:
                pass  # nothing has come yet: is the node alive?
            waited = time.monotonic() - began
            probe = min(cfg.ping_timeout, max(PROBE_FLOOR_S, PROBE_PINGS * self.remote.pings.get(peer, 0.1)))
            if waited + probe >= cfg.request_timeout or not await self.remote.pinger.alive(peer, probe):
                raise NodeUnavailable("the node did not answer within the step timeout", peer)
            timeout = min(timeout, cfg.request_timeout - (time.monotonic() - began))
            logger.info("hop %s is late (%.1f s) but alive: waiting on", state.hop, waited)

    def _step_timeout(self, state: _HopState, tokens: int) -> float:
        """How long to wait for a hop: a floor plus a multiple of what this hop usually takes."""
        cfg = self.remote.config
        recent = state.step_times[-RECENT_STEPS:]
        if recent and tokens <= 4:
            expected = statistics.median(recent)
        else:
            expected = self.remote.expected_seconds(state.hop, tokens)
        return min(cfg.request_timeout, cfg.step_timeout_floor + cfg.step_timeout_factor * expected)

    # ---- failover ---------------------------------------------------------------------------------
    async def _replace(self, index: int, error: BaseException | None) -> None:
        """Re-route hop ``index``'s span and replay its history to the replacement chain."""
        failed = self._hops[index]
        began = time.monotonic()
        loaded = isinstance(error, RemoteError) and error.retryable  # at capacity: load, not failure
        if loaded:
            self.remote.note_busy(error)
        elif error is not None:
            self._on_hop_failure(failed.hop, error)
        await self._close([failed])
        await self._drop_checker(failed)
        # A node at capacity is avoided through its hint (note_busy), so it can be used again later.
        exclude = set(self._distrusted) if loaded else {failed.hop.peer_id} | self._distrusted
        planned = getattr(self.remote.router, "backup", lambda hop: None)(failed.hop)
        while True:
            if planned and not (exclude | self.remote.busy_peers()) & {h.peer_id for h in planned}:
                chain, planned = planned, None  # the backup chosen in advance, when the chain was picked
            else:
                chain = await self.remote.find_chain(failed.hop.start, failed.hop.end, exclude=frozenset(exclude))
            try:
                replacement, _ = await self._replay_chain(chain, failed.history)
                break
            except (NodeUnavailable, RemoteError) as e:
                self._check_refusal(e)
                if e.retryable:
                    self.remote.note_busy(e)
                    continue
                exclude.add(e.peer_id)
                self._on_hop_failure(next(h for h in chain if h.peer_id == e.peer_id), e)
        self._hops[index : index + 1] = replacement
        self.remote.router.release([failed.hop])
        self.remote.router.hold([h.hop for h in replacement])
        event = FailoverEvent(
            time.time(),
            failed.hop,
            "draining" if error is None else f"{type(error).__name__}: {error}",
            tuple(h.hop for h in replacement),
            failed.sent_tokens,
            time.monotonic() - began,
        )
        self.failovers.append(event)
        logger.info("replaced %s by %s (%s) in %.2f s", failed.hop, event.replacement, event.reason, event.seconds)

    async def _replay_chain(
        self, chain: list[Hop], history: list[StepInput]
    ) -> tuple[list[_HopState], list[StepInput]]:
        """Open ``chain`` and replay ``history`` through it; returns its hop states (streams open)
        and the last hop's outputs. On failure every stream it opened is closed."""
        states: list[_HopState] = []
        try:
            inputs = history
            for hop in chain:
                state = await self._open(hop)
                states.append(state)
                inputs = await self._replay(state, inputs)
        except BaseException:
            await self._close(states)
            raise
        return states, inputs

    async def _replay(self, state: _HopState, inputs: list[StepInput], position: int = 0) -> list[StepInput]:
        """Send a hop ``inputs`` (its whole history, or what follows ``position`` tokens it already
        holds), chunk by chunk, pipelined; returns the outputs."""
        first = position

        async def send_all() -> None:
            position = first
            for chunk in inputs:
                await state.stream.send(self._request(state, chunk, position))
                position += chunk.tokens

        async def receive_all() -> list[StepInput]:
            outputs = []
            for chunk in inputs:
                async with asyncio.timeout(self.remote.config.request_timeout):
                    meta, out = hop_output(await state.stream.recv(), state.hop.peer_id, chunk)
                outputs.append(chunk.with_hidden(out))
            return outputs

        _, outputs = await asyncio.gather(send_all(), receive_all())
        state.history = state.history + list(inputs) if position else list(inputs)
        return outputs

    def _check_refusal(self, error: BaseException) -> None:
        """A node that calls our request invalid may be right (then every node says so) or may
        be hostile: the session tries another node, and gives up once two nodes refused."""
        if isinstance(error, InvalidRequest):
            self._refused_by.add(error.peer_id)
            if len(self._refused_by) >= 2:
                raise error

    def _on_hop_failure(self, hop: Hop, error: BaseException) -> None:
        """Every hop failure passes here, so the router bans and learns."""
        logger.warning("hop %s failed: %s", hop, error)
        self.remote.router.report_failure(hop, error)

    async def _close_streams(self) -> None:
        """Close every hop's stream; the session no longer loads its nodes (``chain`` stays readable)."""
        if not self._released:
            self._released = True
            self.remote.router.release(self.chain)
        for state in self._hops:
            await self._drop_checker(state)
        await self._close(self._hops)

    @staticmethod
    async def _close(states: list[_HopState]) -> None:
        for state in states:
            if state.opening is not None:  # opened ahead, never used: close what it opened
                task, state.opening = state.opening, None
                task.cancel()
                await asyncio.wait([task])  # (a cancellation of ours still propagates)
                if not task.cancelled() and task.exception() is None:
                    state.stream = task.result()
            if state.stream is not None:
                await state.stream.close()


def _hop_trace(meta: dict, began: float, built: float, received: float, elapsed: float) -> HopTrace:
    """A hop's share of a step: our stamps (``began`` → ``built`` → ``received``, ``elapsed`` in
    seconds up to the parsed response) and the node's own report."""
    now = time.perf_counter()

    def number(name: str) -> float:
        value = meta.get(name, 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    return HopTrace(
        build_ms=1000 * (built - began),
        wait_ms=1000 * (received - built),
        parse_ms=1000 * (began + elapsed - received),
        report_ms=1000 * (now - began - elapsed),
        node_ms=number("node_ms"),
        queue_ms=number("queue_ms"),
        compute_ms=number("compute_ms"),
    )
