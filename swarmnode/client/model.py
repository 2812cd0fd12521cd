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
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from swarmnode.client.session import InferenceSession
from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.errors import NoServersForBlocks, SessionError
from swarmnode.models import DTYPES, ModelSpec, load_client_head, load_model_spec
from swarmnode.net.dht import store_records
from swarmnode.net.protocol import make_request, read_response
from swarmnode.records import model_id_from_name, observations_key, validate_model_id
from swarmnode.routing import Bans, Hop, make_router

logger = logging.getLogger(__name__)
SHARED_TTL_S = 60.0  # shared observations outlive a client briefly, so later clients still benefit


class RemoteBlocks:
    """All blocks of one model as served by the swarm: finds chains, runs stateless forwards."""

    def __init__(self, connection: SwarmConnection, config: ClientConfig, model_id: str, num_blocks: int):
        self.connection, self.config = connection, config
        self.model_id, self.num_blocks = model_id, num_blocks
        self.client_id = str(connection.p2p.peer_id)
        bans = Bans(base_s=config.ban_base_s, max_s=config.ban_max_s)
        self.router = make_router(config.routing, config.aco_params(), bans=bans, publisher_id=self.client_id)
        self._shared_at = 0.0
        self.last_snapshot = None

    async def _share_observations(self) -> None:
        """Stigmergy: publish what we measured of each node (short-lived), for other clients."""
        observations = getattr(self.router, "observations", None)
        if observations is None or time.monotonic() - self._shared_at < self.config.share_period:
            return
        self._shared_at = time.monotonic()
        measured = observations()
        if measured:
            item = (observations_key(self.model_id), self.client_id, measured)
            try:
                await store_records(self.connection.dht, [item], ttl=max(SHARED_TTL_S, 3 * self.config.share_period))
            except Exception as e:  # noqa: BLE001 - sharing is best effort
                logger.debug("could not share observations: %s", e)

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
        while True:
            snapshot = await self.connection.snapshot(self.model_id, self.num_blocks, max_age=max_age)
            self.last_snapshot = snapshot
            await self._share_observations()
            try:
                return self.router.choose_chain(snapshot, start, end, exclude=exclude)
            except NoServersForBlocks as e:
                waited = time.monotonic() - began
                if waited >= self.config.wait_for_servers:
                    raise NoServersForBlocks(e.blocks, self.model_id, waited) from None
                logger.info("waiting for nodes serving blocks %s of %s", e.blocks, self.model_id)
                await asyncio.sleep(min(1.0, self.config.wait_for_servers - waited))
                max_age = 0.0  # re-read the DHT on the next try

    async def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stateless forward through all blocks (no KV cache kept)."""
        for hop in await self.find_chain():
            request = make_request({"start": hop.start, "end": hop.end}, (hidden,))
            stub = self.connection.stub(hop.peer_id)
            try:
                response = await stub.rpc_forward(request, timeout=self.config.request_timeout)
                _, (hidden,) = read_response(response, hop.peer_id)
            except Exception as e:
                self.router.report_failure(hop, e)
                raise
        return hidden


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
        self.head, self.head_parameters = load_client_head(spec, dtype)
        self.dtype = dtype
        self.generation_config = _generation_defaults(spec)
        self.connection = SwarmConnection(config)
        self.remote = RemoteBlocks(self.connection, config, model_id, spec.num_blocks)

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
        model_id = (
            validate_model_id(model_id) if model_id else (config.model_id or model_id_from_name(model_name_or_path))
        )
        return cls(spec, config, model_id)

    # ---- sessions and forward ----------------------------------------------------------------------
    def inference_session(self, max_length: int) -> InferenceSession:
        """A session whose KV caches live on the nodes across ``generate`` calls."""
        return InferenceSession(self.remote, max_length)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits for every position of ``input_ids`` [batch, seq] (stateless, no session)."""
        input_ids = _as_batch(input_ids)
        positions = torch.arange(input_ids.shape[1])[None]
        hidden = self.head.embed(input_ids, positions)
        hidden = self.connection.run(self.remote.forward(hidden))
        return self.head.logits(hidden.to(self.dtype))

    __call__ = forward

    # ---- generation --------------------------------------------------------------------------------
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        streamer=None,
        session: InferenceSession | None = None,
    ) -> torch.Tensor:
        """Generate like ``transformers``' ``generate`` (greedy or sampling; same defaults).

        Returns the prompt followed by the new tokens; with ``session``, all tokens of the
        session so far (its earlier prompts and outputs, then this call's prompt and new tokens).
        ``streamer`` takes any transformers streamer (``put`` / ``end``).
        """
        steps = self._agenerate(
            input_ids,
            max_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            eos_token_id,
            pad_token_id,
            streamer,
            session,
        )
        return self.connection.run(_last(steps))

    def stream_tokens(self, input_ids: torch.Tensor | None = None, **kwargs) -> Iterator[torch.Tensor]:
        """Like ``generate``, but yields each new token ([batch] tensor) as soon as it exists."""
        steps = self._agenerate(input_ids, **_stream_kwargs(kwargs))
        try:
            self.connection.run(anext(steps))  # the prompt itself
            while True:
                try:
                    tokens = self.connection.run(anext(steps))
                except StopAsyncIteration:
                    return
                yield tokens[:, -1]
        finally:
            self.connection.run(steps.aclose())

    async def _agenerate(
        self,
        input_ids,
        max_new_tokens=20,
        do_sample=False,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=None,
        pad_token_id=None,
        streamer=None,
        session=None,
    ):
        """Yields all tokens so far: once before generating, then after each new token.

        Runs on the client's event loop thread, so a token costs no thread handoffs.
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        own_session = session is None
        prompt = _as_batch(input_ids) if input_ids is not None else None
        if own_session:
            if prompt is None:
                raise ValueError("input_ids is required without a session")
            session = self.inference_session(prompt.shape[1] + max_new_tokens)
        try:
            context, to_send = _session_inputs(session, prompt)
            processors = _processors(do_sample, temperature, top_k, top_p, repetition_penalty)
            eos = torch.tensor(_eos_ids(eos_token_id, self.generation_config.get("eos_token_id")), dtype=torch.long)
            pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
            if streamer is not None and prompt is not None:
                streamer.put(prompt.cpu())
            unfinished = torch.ones(context.shape[0], dtype=torch.bool)
            yield context
            for index in range(max_new_tokens):
                hidden = await session.step_async(self._embed(to_send, session.position))
                if index == 0:
                    session.first_prefix_lengths.append(session.reported_prefix_lengths)
                    session.first_step_tokens.append(to_send.shape[1])
                next_ids = self._next_tokens(hidden, context, processors, do_sample)
                next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, pad))
                context = torch.cat([context, next_ids[:, None]], dim=1)
                to_send = next_ids[:, None]
                session.token_ids, session.pending_ids = context, to_send
                if streamer is not None:
                    streamer.put(next_ids.cpu())
                yield context
                if len(eos):
                    unfinished &= ~torch.isin(next_ids, eos)
                    if not unfinished.any():
                        break
            session.token_ids, session.pending_ids = context, to_send
        finally:
            if streamer is not None:
                streamer.end()
            if own_session:
                await session.aclose()

    @torch.inference_mode()
    def _embed(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        return self.head.embed(ids, torch.arange(position, position + ids.shape[1])[None])

    @torch.inference_mode()
    def _next_tokens(self, hidden: torch.Tensor, context: torch.Tensor, processors, do_sample: bool) -> torch.Tensor:
        scores = self.head.logits(hidden[:, -1:].to(self.dtype))[:, -1].float()
        scores = processors(context, scores)
        if do_sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        return scores.argmax(dim=-1)

    # ---- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def _session_inputs(session: InferenceSession, prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(all tokens so far incl. the prompt, tokens still to send through the chain)."""
    if session.token_ids is None:
        if prompt is None:
            raise SessionError("the session is empty: pass input_ids")
        return prompt, prompt
    pending = session.pending_ids if session.pending_ids is not None else session.token_ids[:, :0]
    if prompt is None:
        return session.token_ids, pending
    if prompt.shape[0] != session.token_ids.shape[0]:
        raise SessionError(f"batch size {prompt.shape[0]} differs from the session's {session.token_ids.shape[0]}")
    return torch.cat([session.token_ids, prompt], 1), torch.cat([pending, prompt], 1)


def _processors(
    do_sample: bool, temperature: float, top_k: int, top_p: float, repetition_penalty: float
) -> LogitsProcessorList:
    """The same processors, in the same order, as transformers' generate."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if do_sample:
        if temperature <= 0:
            raise ValueError("temperature must be positive when sampling")
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=top_p))
    return processors


def _eos_ids(given, default) -> list[int]:
    value = given if given is not None else default
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _generation_defaults(spec: ModelSpec) -> dict:
    folder = spec.checkpoint.local_dir
    defaults = {"eos_token_id": getattr(spec.config, "eos_token_id", None)}
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(str(folder) if folder else spec.checkpoint.source)
        defaults["eos_token_id"] = gen.eos_token_id
    except (OSError, ValueError):
        pass
    return defaults


def _stream_kwargs(kwargs: dict) -> dict:
    allowed = {
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "eos_token_id",
        "pad_token_id",
        "streamer",
        "session",
    }
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unexpected arguments {sorted(unknown)}")
    return kwargs
