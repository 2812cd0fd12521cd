"""``DistributedModelForCausalLM``: a Hugging Face–style causal LM whose blocks run on the swarm.

The client holds only the embeddings, the final norm and the LM head; the blocks run
on a chain of nodes chosen by the router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import torch

from swarmnode.client.generation import load_generation_config, plan_generation, prompt_positions
from swarmnode.client.pinger import Pinger
from swarmnode.client.session import InferenceSession
from swarmnode.client.streaming import AheadStream
from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.errors import ModelMismatch, NoServersForBlocks, RemoteError, SessionError
from swarmnode.models import DTYPES, ModelSpec, load_client_head, load_model_spec
from swarmnode.models.layout import resolve_layout
from swarmnode.net.dht import store_records
from swarmnode.net.push import Pusher
from swarmnode.records import model_id_from_name, observations_key, precise_enough, validate_model_id
from swarmnode.routing import Bans, Hop, make_router

logger = logging.getLogger(__name__)
SHARED_TTL_S = 60.0  # shared observations outlive a client briefly, so later clients still benefit
DEFAULT_RETRY_AFTER_S = 2.0  # a node at capacity that gave no hint is avoided this long
MAX_RETRY_AFTER_S = 60.0
STREAM_LOOKAHEAD = 2  # tokens stream_tokens may generate before the caller has taken the earlier ones


class RemoteBlocks:
    """All blocks of one model as served by the swarm: finds chains, runs stateless forwards."""

    def __init__(
        self, connection: SwarmConnection, config: ClientConfig, model_id: str, num_blocks: int, config_hash: str = ""
    ):
        self.connection, self.config = connection, config
        self.model_id, self.num_blocks = model_id, num_blocks
        self.config_hash = config_hash  # of the client's checkpoint: nodes with another one refuse
        self._model_checked = False
        self.client_id = str(connection.p2p.peer_id)
        bans = Bans(base_s=config.ban_base_s, max_s=config.ban_max_s)
        self.pings: dict[str, float] = {}  # measured by us, never taken from a node's word
        self.router = make_router(
            config.routing, config.aco_params(), bans=bans, publisher_id=self.client_id, pings=self.pings
        )
        self.pinger = Pinger(connection, self.pings, config.ping_period, config.ping_timeout)
        self.pusher = Pusher(connection.p2p, delay_s=config.debug_network_delay_ms / 1000)  # forwarding fallback
        self._shared_at = 0.0
        self.last_snapshot = None
        self._busy: dict[str, float] = {}  # peer → when its "at capacity" hint expires (monotonic)

    def note_busy(self, error: RemoteError) -> None:
        """A node refused with a retryable error (NodeBusy, CacheExhausted): it is loaded, not
        broken. Chains avoid it until its ``retry_after`` hint expires; no ban, no penalty."""
        hint = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_AFTER_S
        self._busy[error.peer_id] = time.monotonic() + min(hint, MAX_RETRY_AFTER_S)
        logger.info("node %s is at capacity (%s): avoided for %.1f s", error.peer_id, error.message, hint)

    def _busy_now(self) -> dict[str, float]:
        now = time.monotonic()
        self._busy = {peer: until for peer, until in self._busy.items() if until > now}
        return self._busy

    def busy_peers(self) -> frozenset[str]:
        """Nodes that said they are at capacity, until their hints expire."""
        return frozenset(self._busy_now())

    def _share_observations(self) -> None:
        """Stigmergy: publish what we measured of each node (short-lived), for other clients.

        Runs in the background: a DHT write never sits on the token path."""
        observations = getattr(self.router, "observations", None)
        if observations is None or time.monotonic() - self._shared_at < self.config.share_period:
            return
        self._shared_at = time.monotonic()
        measured = observations()
        if measured:
            item = (observations_key(self.model_id), self.client_id, measured)
            ttl = max(SHARED_TTL_S, 3 * self.config.share_period)
            dht, identity = self.connection.dht, self.connection.identity
            self.connection.background(lambda: store_records(dht, identity, [item], ttl=ttl), "sharing observations")

    async def _check_model_record(self) -> None:
        """Refuse a swarm that announces another checkpoint under this model id."""
        record = (await self.connection.models()).get(self.model_id)
        if record is None:
            return  # nobody serves it yet: find_chain waits for nodes, then checks again
        self._model_checked = True
        if self.config_hash and record.config_hash and record.config_hash != self.config_hash:
            raise ModelMismatch(
                f"checkpoints differ: the swarm serves {self.model_id!r} with config hash {record.config_hash}, "
                f"this client's checkpoint has {self.config_hash}"
            )

    def expected_seconds(self, hop: Hop, tokens: int) -> float:
        """What a step of ``tokens`` tokens should take on ``hop``, from its advertised throughput."""
        record = self.last_snapshot.nodes.get(hop.peer_id) if self.last_snapshot else None
        blocks = hop.end - hop.start
        if record is None or record.inference_rps <= 0:
            return 1.0
        if tokens <= 4:
            return blocks / record.inference_rps
        return tokens * blocks / max(record.prefill_rps, record.inference_rps)

    async def find_chain(
        self, start: int = 0, end: int | None = None, exclude: frozenset[str] = frozenset()
    ) -> list[Hop]:
        """A chain over [start, end), waiting up to ``wait_for_servers`` for missing blocks."""
        end = self.num_blocks if end is None else end
        began = time.monotonic()
        max_age = None
        if not self._model_checked:
            await self._check_model_record()
        while True:
            snapshot = await self.connection.snapshot(self.model_id, self.num_blocks, max_age=max_age)
            self.last_snapshot = snapshot
            self._share_observations()
            await self.pinger.refresh(r.peer_id for r in snapshot.live() if r.peer_id not in exclude)
            busy = self._busy_now()
            # Nodes whose weights are less precise than this client accepts are never chosen.
            imprecise = {
                r.peer_id
                for r in snapshot.nodes.values()
                if not precise_enough(r.quantization, self.config.min_precision)
            }
            try:
                return self.router.choose_chain(snapshot, start, end, exclude=exclude | frozenset(busy) | imprecise)
            except NoServersForBlocks as e:
                waited = time.monotonic() - began
                if busy and waited < self.config.busy_wait:
                    # Nodes exist but are at capacity: wait for the first of them to take sessions again.
                    pause = min(min(busy.values()) - time.monotonic(), self.config.busy_wait - waited)
                    logger.info("every node for blocks %s is at capacity: waiting %.1f s", e.blocks, pause)
                    await asyncio.sleep(max(0.05, pause))
                    continue
                if waited >= self.config.wait_for_servers:
                    raise NoServersForBlocks(e.blocks, self.model_id, waited) from None
                logger.info("waiting for nodes serving blocks %s of %s", e.blocks, self.model_id)
                await asyncio.sleep(min(1.0, self.config.wait_for_servers - waited))
                max_age = 0.0  # re-read the DHT on the next try

    async def forward(self, hidden: torch.Tensor, *padding: torch.Tensor) -> torch.Tensor:
        """Stateless forward through all blocks (no KV cache kept); ``padding`` is
        (attention mask, position ids) for a padded batch, or nothing.

        It runs as a one-step, stateless inference session: streams carry hidden states of any
        size (a unary RPC is capped by the transport's 2 MiB message size), the step timeout
        scales with its length, a late node is probed before it counts as failed, and a failed
        hop fails over like any session's instead of failing the call."""
        session = InferenceSession(self, max_length=hidden.shape[1], stateless=True)
        try:
            return await session.step_async(hidden, *padding)
        finally:
            await session.aclose()


class DistributedModelForCausalLM:
    """A causal LM whose transformer blocks run on a SwarmBee swarm.

    >>> model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[maddr])
    >>> out = model.generate(input_ids, max_new_tokens=32)
    >>> with model.inference_session(max_length=512) as sess:
    ...     a = model.generate(ids, max_new_tokens=16, session=sess)
    ...     b = model.generate(more_ids, max_new_tokens=16, session=sess)  # sends only new tokens
    """

    def __init__(self, spec: ModelSpec, config: ClientConfig, model_id: str):
        self.spec = spec
        self.config = spec.config  # the Hugging Face config, as in transformers
        self.client_config = config
        dtype = DTYPES.get(config.dtype, torch.float32)
        layout = resolve_layout(config.head_layout, "cpu", dtype, "none")  # ConfigError if it cannot apply
        self.head, self.head_parameters = load_client_head(spec, dtype, layout)
        self.dtype = dtype
        folder = spec.checkpoint.local_dir
        self.generation_config = load_generation_config(str(folder) if folder else spec.path, spec.config)
        self.connection = SwarmConnection(config)
        self.remote = RemoteBlocks(
            self.connection, config, model_id, spec.num_blocks, config_hash=spec.checkpoint.config_hash()
        )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        initial_peers: list[str] | tuple[str, ...],
        model_id: str | None = None,
        **client_options,
    ) -> DistributedModelForCausalLM:
        """Load the head of ``model_name_or_path`` (folder or hub name) and connect to the swarm.

        ``client_options`` are :class:`~swarmnode.config.ClientConfig` fields (e.g. ``wait_for_servers``).
        """
        config = load_config(ClientConfig, {"initial_peers": tuple(initial_peers), **client_options})
        spec = load_model_spec(model_name_or_path)
        model_id = validate_model_id(model_id) if model_id else (config.model_id or model_id_from_name(spec.name))
        return cls(spec, config, model_id)

    # ---- sessions and forward ----------------------------------------------------------------------
    def inference_session(self, max_length: int) -> InferenceSession:
        """A session whose KV caches live on the nodes across ``generate`` calls."""
        return InferenceSession(self.remote, max_length)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every position of ``input_ids`` [batch, seq] (stateless, no session).

        ``attention_mask`` (0 = padding) and ``position_ids`` behave as in the model's own
        ``forward`` in transformers; without position ids the family's default is used.
        """
        input_ids = _as_batch(input_ids)
        mask = None if attention_mask is None else _as_mask(attention_mask, input_ids.shape)
        custom = position_ids is not None or (mask is not None and not bool(mask.all()))
        if position_ids is None:
            position_ids = self.spec.family.forward_positions(mask, input_ids.shape[1])
        position_ids = torch.as_tensor(position_ids).long().expand(input_ids.shape[0], -1).contiguous()
        hidden = self.head.embed(input_ids, position_ids)
        # Nodes need the mask and positions only when they are not the plain unpadded, consecutive case.
        extras = (mask if mask is not None else torch.ones_like(input_ids), position_ids) if custom else ()
        hidden = self.connection.run(self.remote.forward(hidden, *extras))
        return self.head.logits(hidden.to(self.dtype))

    __call__ = forward

    # ---- generation --------------------------------------------------------------------------------
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        session: InferenceSession | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> torch.Tensor:
        """Generate like ``transformers``' ``generate``: greedy or sampling, with the same
        defaults (the checkpoint's ``generation_config.json``, then transformers' own),
        the same logits processors in the same order, and the same handling of padding.

        ``options`` are generation-config fields (``max_new_tokens``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``eos_token_id``,
        ``pad_token_id``, ...). ``attention_mask`` marks the real tokens of a left-padded
        batch (inferred from pad tokens when omitted, as transformers does). ``generator``
        makes sampling reproducible without touching the global RNG.

        Returns the prompt followed by the new tokens; with ``session``, all tokens of the
        session so far (its earlier prompts and outputs, then this call's prompt and new tokens).
        ``streamer`` takes any transformers streamer (``put`` / ``end``).
        """
        steps = self._agenerate(input_ids, attention_mask, streamer, session, generator, options)
        return self.connection.run(_last(steps))

    def stream_tokens(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        session: InferenceSession | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> Iterator[torch.Tensor]:
        """Like ``generate``, but yields each new token ([batch] tensor) as soon as it exists.

        Generation runs ahead of the caller by up to two tokens (the next step does not wait
        for the caller to ask for it). A caller that stops early leaves ``session`` holding
        exactly the tokens it took (any generated beyond them are rolled back); a ``streamer``
        may have seen those too.
        """
        steps = self._agenerate(input_ids, attention_mask, streamer, session, generator, options)
        stream = AheadStream(self.connection.loop, steps, lookahead=STREAM_LOOKAHEAD)
        try:
            stream.get()  # the prompt itself
            while True:
                more, tokens = stream.get()
                if not more:
                    return
                yield tokens[:, -1]
        finally:
            unread = stream.close()
            if unread and session is not None and session.token_ids is not None and not session.closed:
                session.rollback(session.token_ids.shape[1] - unread)

    async def _agenerate(self, input_ids, attention_mask, streamer, session, generator, options):
        """Yields all tokens so far: once before generating, then after each new token.

        Runs on the client's event loop thread, so a token costs no thread handoffs.
        """
        own_session = session is None
        prompt = _as_batch(input_ids) if input_ids is not None else None
        if own_session and prompt is None:
            raise ValueError("input_ids is required without a session")
        history = 0 if own_session or session.token_ids is None else session.token_ids.shape[1]
        context, to_send = _session_inputs(session, prompt)
        plan = plan_generation(
            self.config,
            self.generation_config,
            context,
            attention_mask,
            None if own_session else session.attention_mask,
            history,
            options,
        )
        if own_session:
            session = self.inference_session(context.shape[1] + plan.max_new_tokens)
        try:
            mask = plan.attention_mask if plan.attention_mask is not None else session.attention_mask
            if mask is not None and mask.shape[1] < context.shape[1]:  # padding earlier in the session only
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], context.shape[1] - mask.shape[1]))], 1)
            session.attention_mask = mask
            positions = None if mask is None else prompt_positions(mask, context.shape[1] - to_send.shape[1])
            if streamer is not None and prompt is not None:
                streamer.put(prompt.cpu())
            unfinished = torch.ones(context.shape[0], dtype=torch.bool)
            yield context
            for index in range(plan.max_new_tokens):
                began = time.perf_counter()
                inputs = self._step_inputs(session, to_send, positions)
                embedded = time.perf_counter()
                hidden = await session.step_async(*inputs)
                stepped = time.perf_counter()
                if index == 0:  # what each hop held before this call's first step (tests check reuse)
                    session.first_prefix_lengths.append(session.reported_prefix_lengths)
                    session.first_step_tokens.append(to_send.shape[1])
                next_ids = self._next_tokens(hidden, context, plan, generator)
                sampled = time.perf_counter()
                next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, plan.pad))
                context = torch.cat([context, next_ids[:, None]], dim=1)
                to_send = next_ids[:, None]
                if positions is not None:
                    positions = positions[:, -1:] + 1  # transformers: the last position plus one
                    session.attention_mask = torch.cat([session.attention_mask, torch.ones_like(to_send)], 1)
                session.token_ids, session.pending_ids = context, to_send
                if streamer is not None:
                    streamer.put(next_ids.cpu())
                if session.tracing:
                    _finish_trace(session.trace, began, embedded, stepped, sampled)
                yield context
                if len(plan.eos):
                    unfinished &= ~torch.isin(next_ids, plan.eos)
                    if not unfinished.any():
                        break
            session.token_ids, session.pending_ids = context, to_send
        finally:
            if streamer is not None:
                streamer.end()
            if own_session:
                await session.aclose()

    @torch.inference_mode()
    def _step_inputs(self, session: InferenceSession, ids: torch.Tensor, positions: torch.Tensor | None):
        """(hidden states, mask, positions) of the tokens ``ids`` that follow the session's position."""
        if positions is None:
            return (
                self.head.embed(ids, torch.arange(session.position, session.position + ids.shape[1])[None]),
                None,
                None,
            )
        mask = session.attention_mask[:, session.position : session.position + ids.shape[1]]
        return self.head.embed(ids, positions), mask.contiguous(), positions.contiguous()

    @torch.inference_mode()
    def _next_tokens(self, hidden: torch.Tensor, context: torch.Tensor, plan, generator) -> torch.Tensor:
        # As transformers' _sample: float32 logits of the last position, processors, then argmax or a draw.
        scores = self.head.logits(hidden[:, -1:].to(self.dtype))[:, -1].float()
        scores = plan.processors(context, scores)
        if plan.do_sample:
            probs = torch.softmax(scores, dim=-1)
            return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        return scores.argmax(dim=-1)

    # ---- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finish_trace(trace, began: float, embedded: float, stepped: float, sampled: float) -> None:
    now = time.perf_counter()
    trace.embed_ms = 1000 * (embedded - began)
    trace.head_ms = 1000 * (sampled - stepped)
    trace.loop_ms = 1000 * (now - sampled)
    trace.started, trace.finished = began, now


async def _last(steps):
    result = None
    async for tokens in steps:
        result = tokens
    return result


def _as_batch(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be a non-empty [batch, seq] integer tensor, got {tuple(ids.shape)}")
    return ids.long()


def _session_inputs(session: InferenceSession | None, prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(all tokens so far incl. the prompt, tokens still to send through the chain)."""
    if session is None or session.token_ids is None:
        if prompt is None:
            raise SessionError("the session is empty: pass input_ids")
        return prompt, prompt
    pending = session.pending_ids if session.pending_ids is not None else session.token_ids[:, :0]
    if prompt is None:
        return session.token_ids, pending
    if prompt.shape[0] != session.token_ids.shape[0]:
        raise SessionError(f"batch size {prompt.shape[0]} differs from the session's {session.token_ids.shape[0]}")
    return torch.cat([session.token_ids, prompt], 1), torch.cat([pending, prompt], 1)


def _as_mask(mask, shape: torch.Size) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.ndim == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask values must be 0 or 1")
    return mask.long()
