"""``swarmnode api``: an OpenAI-compatible HTTP API backed by the swarm (FastAPI + uvicorn).

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(the model's chat template applied), ``GET /health``. ``stream: true`` answers with
server-sent events ending in ``data: [DONE]``. Every request gets its own inference
session, so concurrent requests are served at the same time (each in a worker thread;
the swarm client multiplexes them on its event loop). Errors follow OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (bad JSON,
out-of-range values, too long a prompt), 404 for an unknown model or path, 503 when the
swarm cannot serve (no node for some blocks, swarm unreachable).

Sampling: ``temperature`` 0 is greedy; otherwise the model samples with ``temperature``
and ``top_p`` (and the checkpoint's other generation defaults, as ``generate`` does);
``seed`` makes a request reproducible (its own RNG, untouched by concurrent requests).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarmnode.client.text import IncrementalDecoder, StopSequences, chat_prompt_ids, eos_token_ids
from swarmnode.errors import (
    ModelLoadError,
    NodeUnavailable,
    NoServersForBlocks,
    RemoteError,
    SwarmNodeError,
    SwarmUnavailable,
)
from swarmnode.frontends.api_schemas import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)
DEFAULT_MAX_CONTEXT = 8192  # the nodes' default session limit


class ApiError(Exception):
    """An error answered to the caller in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _unavailable(error: Exception) -> ApiError:
    return ApiError(
        503, f"the swarm cannot serve this request now: {error}", "service_unavailable", "swarm_unavailable"
    )


@dataclass
class Job:
    """One request's generation, decided before its first step."""

    prompt_ids: list[int]
    max_new_tokens: int
    options: dict
    generator: torch.Generator | None
    stops: list[str]


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" or "length"
    completion_tokens: int


class SwarmApi:
    """The API's state: one swarm client (model + tokenizer) shared by all requests."""

    def __init__(self, model, tokenizer, max_context: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.model_id = model.remote.model_id
        self.names = {self.model_id, model.spec.name}
        limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_CONTEXT
        self.max_context = max_context or min(int(limit), DEFAULT_MAX_CONTEXT)
        self.eos = eos_token_ids(model.generation_config)
        self.created = int(time.time())

    # ---- building a job --------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise ApiError(404, f"model {name!r} is not served here; try {self.model_id!r}", "invalid_request_error",
                           "model_not_found", "model")  # fmt: skip

    def job(self, request, prompt_ids: list[int], max_tokens: int | None) -> Job:
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", "invalid_request_error", None, "prompt")
        room = self.max_context - len(prompt_ids)
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = f" + {max_tokens} tokens to generate" if max_tokens is not None else ""
            raise ApiError(
                400,
                f"this model's context holds {self.max_context} tokens; the prompt has {len(prompt_ids)}{asked}",
                "invalid_request_error",
                "context_length_exceeded",
                "messages" if isinstance(request, ChatCompletionRequest) else "prompt",
            )
        vocab = int(self.model.config.vocab_size)
        if any(not 0 <= i < vocab for i in prompt_ids):
            raise ApiError(400, f"token ids must be in 0..{vocab - 1}", "invalid_request_error", None, "prompt")
        options = {"do_sample": request.temperature > 0}
        if request.temperature > 0:
            options.update(temperature=request.temperature, top_p=request.top_p)
        generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
        return Job(prompt_ids, max_tokens if max_tokens is not None else room, options, generator, request.stop_list())

    def completion_prompt(self, request: CompletionRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return [int(i) for i in prompt]
        text = prompt[0] if isinstance(prompt, list) else prompt
        return list(self.tokenizer(text)["input_ids"])

    def chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        try:
            return chat_prompt_ids(self.tokenizer, request.chat_messages())
        except ModelLoadError as e:
            raise ApiError(400, str(e), "invalid_request_error", None, "messages") from e

    # ---- running it ------------------------------------------------------------------------------
    def events(self, job: Job) -> Iterator[str | Finished]:
        """Text deltas (stop sequences cut, special tokens skipped), then one :class:`Finished`."""
        decoder, stopper = IncrementalDecoder(self.tokenizer), StopSequences(job.stops)
        count, reason = 0, "length"
        stream = self.model.stream_tokens(
            torch.tensor([job.prompt_ids]),
            max_new_tokens=job.max_new_tokens,
            generator=job.generator,
            **job.options,
        )
        try:
            for token in stream:
                count += 1
                token_id = int(token[0])
                text = stopper.feed(decoder.push(token_id))
                if text:
                    yield text
                if stopper.stopped or token_id in self.eos:
                    reason = "stop"
                    break
        except (NoServersForBlocks, SwarmUnavailable, NodeUnavailable) as e:
            raise _unavailable(e) from e
        finally:
            stream.close()
        tail = stopper.feed(decoder.finish()) + stopper.flush()
        if tail:
            yield tail
        yield Finished(reason, count)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(api: SwarmApi) -> FastAPI:
    """The FastAPI application serving ``api``."""
    app = FastAPI(title="SwarmBee OpenAI-compatible API")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid value')}"
        return ApiError(400, message, "invalid_request_error", first.get("type"), where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return ApiError(error.status_code, str(error.detail), kind).response()

    @app.get("/health")
    async def health():
        try:
            missing = await run_in_threadpool(_uncovered_blocks, api)
        except SwarmNodeError as e:
            return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503)
        if missing:
            return JSONResponse({"status": "unavailable", "missing_blocks": missing}, status_code=503)
        return {"status": "ok", "model": api.model_id}

    @app.get("/v1/models")
    async def models():
        card = {"id": api.model_id, "object": "model", "created": api.created, "owned_by": "swarmbee"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        api.check_model(request.model)
        prompt = await run_in_threadpool(api.completion_prompt, request)
        job = api.job(request, prompt, request.max_tokens)
        return await _respond(api, request, job, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        api.check_model(request.model)
        prompt = await run_in_threadpool(api.chat_prompt, request)
        job = api.job(request, prompt, request.answer_limit())
        return await _respond(api, request, job, chat=True)

    return app


def _uncovered_blocks(api: SwarmApi) -> list[int]:
    remote = api.model.remote
    snapshot = remote.connection.run(remote.connection.snapshot(remote.model_id, remote.num_blocks, max_age=1.0))
    return snapshot.uncovered()


async def _respond(api: SwarmApi, request, job: Job, chat: bool):
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    events = api.events(job)
    try:
        # The prompt step runs before any byte is sent, so a swarm that cannot serve is a 503, not a broken stream.
        first = await run_in_threadpool(next, events)
    except (NoServersForBlocks, SwarmUnavailable, RemoteError) as e:
        raise _unavailable(e) from e
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        body = _stream(api, events, first, rid, created, chat, len(job.prompt_ids), include_usage)
        return StreamingResponse(body, media_type="text/event-stream")
    parts, finished = await run_in_threadpool(_collect, events, first)
    text = "".join(parts)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finished.reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finished.reason}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": api.model_id,
        "choices": [choice],
        "usage": _usage(len(job.prompt_ids), finished.completion_tokens),
    }


def _collect(events: Iterator, first) -> tuple[list[str], Finished]:
    parts = []
    for item in _chain(first, events):
        if isinstance(item, Finished):
            return parts, item
        parts.append(item)
    raise RuntimeError("generation ended without a result")  # events always ends with Finished


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _stream(api, events, first, rid, created, chat, prompt_tokens, include_usage) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format (a sync iterator: Starlette runs it in a thread)."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": delta_text} if delta_text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": kind, "created": created, "model": api.model_id, "choices": [choice]}

    if chat:
        yield _sse(chunk(None, None, role=True))
    try:
        for item in _chain(first, events):
            if isinstance(item, Finished):
                yield _sse(chunk(None, item.reason))
                if include_usage:
                    usage = {"id": rid, "object": kind, "created": created, "model": api.model_id, "choices": []}
                    yield _sse({**usage, "usage": _usage(prompt_tokens, item.completion_tokens)})
                break
            yield _sse(chunk(item, None))
    except (ApiError, SwarmNodeError) as e:
        message = e.message if isinstance(e, ApiError) else str(e)
        yield _sse({"error": {"message": message, "type": "service_unavailable", "param": None, "code": None}})
    yield _sse("[DONE]")


def serve(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, max_context: int | None = None) -> None:
    """Run the API until SIGTERM/SIGINT (uvicorn handles both gracefully)."""
    import uvicorn

    api = SwarmApi(model, tokenizer, max_context)
    logger.info("serving %s on http://%s:%d/v1 (context %d tokens)", api.model_id, host, port, api.max_context)
    uvicorn.run(create_app(api), host=host, port=port, log_level="warning")
