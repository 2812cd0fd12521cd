"""The node's step scheduler: one thread owns every forward pass.

The event loop decodes, validates, enqueues (:meth:`StepScheduler.submit`) and answers;
it never runs a tensor operation of any size. The scheduler thread runs *iterations*:

1. every decoding step waiting (at most ``max_batch``): steps of different sessions over the
   same span that can share a forward (one token, batch 1, no padding, not exact) run as one
   batched forward per block (continuous batching: a session joins the next iteration after
   its request arrives, and leaves when it stops sending); the others run one by one;
2. then one chunk, at most ``prefill_chunk`` tokens, of the oldest waiting prompt.

So a decoding step waits behind at most one prompt chunk, and a long prompt advances every
iteration. Chunk boundaries depend only on the prompt's length, never on load, so a replica
or a replay of the same request computes exactly the same floats.

Once the node has measured its step costs (:meth:`StepScheduler.calibrate`), a batch may run
padded to a cheaper size, and an iteration may wait briefly for steps about to arrive when the
bigger batch serves more tokens per second (:mod:`swarmnode.server.batch_policy`).

Why one thread: two threads running torch ops each get an OpenMP team, and with more team
workers than CPUs every team's workers sleep between parallel regions (server/threads.py);
one owner also makes the order of work a decision in one place.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from swarmnode.server.backend import BlockBackend
from swarmnode.server.batch_policy import ArrivalModel, batch_cost, gather_wait, padding_plan
from swarmnode.server.cache import SessionCache

logger = logging.getLogger(__name__)

DECODE_TOKENS = 4  # requests of at most this many tokens are decoding steps (priority)
DEFAULT_PREFILL_CHUNK = 256  # tokens of a prompt per iteration
DEFAULT_MAX_BATCH = 64  # decoding steps per iteration
# Intra-op threads pay off only for prompt-sized matmuls: measured on this project's 2-core CPU
# machine on the compute thread, decoding steps were never faster with 2 threads than with 1 (one
# Llama block, 8 rows: 1.43 vs 0.20 ms at hidden 64, 10.2 vs 9.2 ms at hidden 1024; SmolLM2, 15
# blocks, 1 row: 16.4 vs 16.2 ms), prompts were (SmolLM2, 15 blocks, 40 tokens: 39 vs 61 ms;
# hidden 1024, 256 tokens: 59 vs 102 ms per block) unless tiny (hidden 64, 40 tokens: 1.34 vs
# 0.28 ms). So an iteration uses the node's threads only from PARALLEL_ROWS rows and
# PARALLEL_WORK rows × hidden². With the packed weight layout (models/layout.py) a decoding step
# does gain from 2 threads in-process (SmolLM2 0.47 against 0.62 ms per block), but two nodes
# sharing this machine's 2 cores were slower with it (15 blocks: 12.6 against 9.95 ms a step,
# scripts/bench_token_budget.py), so the rule stays; a node alone on a multi-core device would
# gain from using its threads for decoding too (not built: it needs to know it is alone). The
# figures above were taken while the node's main thread still had an OpenMP team (threads.py);
# without it, two co-located nodes decoding on 2 threads were still slower (12.3, 14.6 vs 10.7 ms).
PARALLEL_ROWS = 16
PARALLEL_WORK = 1 << 22
# The longest an iteration waits for predicted steps, in single decoding steps of the span.
# Measured at 8 sessions on wide-llama over 2 nodes (scripts/bench_throughput.py, one run each,
# noisy): 1 gave 72, 2 gave 88 (median 79 over three rounds of another run), 3 gave 77 and 5
# gave 68 tokens/s: longer waits idle the nodes more than the bigger batches save.
GATHER_SINGLE_STEPS = 2.0


@dataclass(eq=False)
class StepJob:
    """One request waiting for (or being run by) the scheduler."""

    hidden: torch.Tensor
    start: int
    end: int
    cache: SessionCache | None
    mask: torch.Tensor | None
    positions: torch.Tensor | None
    exact: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # first compute for this job
    compute_s: float = 0.0  # compute this job took (a batched step counts the whole batch's time)
    batch: int = 1  # sessions in the forward that ran it (the last chunk's, for a prompt)
    done: int = 0  # tokens computed so far (a chunked prompt)
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[1])

    @property
    def batchable(self) -> bool:
        """Whether this step may share a batched forward with other sessions' steps."""
        cache = self.cache
        return (
            not self.exact
            and cache is not None
            and self.hidden.shape[0] == 1
            and self.tokens == 1
            and self.mask is None
            and cache.key_mask is None
        )


@dataclass(frozen=True)
class StepResult:
    """What a job's caller gets back: the output and where the time went."""

    output: torch.Tensor
    queue_s: float  # enqueued → done, minus compute
    compute_s: float
    batch: int


class StepScheduler:
    """Owns the compute thread; see the module docstring for the policy."""

    def __init__(
        self,
        backend: BlockBackend,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        max_batch: int = DEFAULT_MAX_BATCH,
        batching: bool = True,
        on_iteration: Callable[[int, int, float], None] | None = None,
        threads: int | None = None,
    ):
        if prefill_chunk < 1 or max_batch < 1 or (threads is not None and threads < 1):
            raise ValueError("prefill_chunk, max_batch and threads must be positive")
        self.backend = backend
        self.prefill_chunk, self.max_batch, self.batching = prefill_chunk, max_batch, batching
        self.on_iteration = on_iteration  # (decode steps, prompt tokens, seconds), from the thread
        self._decodes: deque[StepJob] = deque()
        self._prompts: deque[StepJob] = deque()
        self._calls: deque[tuple[Callable[[], Any], asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self.threads = threads or torch.get_num_threads()  # the node's setting: the most an iteration uses
        self._threads_now = 0
        self.padding: tuple[int, ...] = ()  # padding_plan of the node's measured step costs; () = none
        self.gather = False  # wait for predicted steps (calibrate turns it on)
        self._cost_per_block: Callable[[int], float] | None = None
        self._arrivals = ArrivalModel()  # under _wake
        self._thread = threading.Thread(target=self._serve, name="swarmnode-compute", daemon=True)
        self._thread.start()

    # ---- event-loop side ---------------------------------------------------------------------------
    async def submit(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: SessionCache | None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        exact: bool = False,
    ) -> StepResult:
        """Queue one request; returns when its output is ready. Errors raised by the compute
        (InvalidRequest for non-finite inputs, RuntimeError, ...) are raised here."""
        loop = asyncio.get_running_loop()
        job = StepJob(hidden, start, end, cache, mask, positions, exact, loop.create_future(), loop)
        with self._wake:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            (self._decodes if job.tokens <= DECODE_TOKENS else self._prompts).append(job)
            if self.gather and job.batchable:  # round trips are learned only where they are used
                self._arrivals.arrived(job.cache, job.enqueued)
            self._wake.notify()
        return await job.future

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the compute thread (profiling, anything else that touches tensors)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            self._calls.append((fn, future, loop))
            self._wake.notify()
        return await future

    @property
    def waiting(self) -> int:
        """Requests queued or running (a gauge for metrics and admission)."""
        return len(self._decodes) + len(self._prompts)

    def close(self) -> None:
        """Stop the thread after the iteration in progress; queued requests fail."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)
        for job in [*self._decodes, *self._prompts]:
            _settle(job.loop, job.future, error=RuntimeError("the node is shutting down"))
        for _, future, loop in self._calls:
            _settle(loop, future, error=RuntimeError("the node is shutting down"))

    # ---- compute thread ----------------------------------------------------------------------------
    def use_threads(self, rows: int) -> None:
        """(On the compute thread.) Set its intra-op threads for ``rows`` rows of work (see PARALLEL_WORK)."""
        big = rows >= PARALLEL_ROWS and rows * self.backend.hidden_size**2 >= PARALLEL_WORK
        wanted = self.threads if big else 1
        if self.backend.device.type == "cpu" and wanted != self._threads_now:
            torch.set_num_threads(wanted)
            self._threads_now = wanted

    def calibrate(self, costs: Sequence[float], gather: bool = True) -> None:
        """Take the node's measured seconds per block of decoding steps of 1..len(costs) sessions:
        pad batches where cheaper, and (``gather``) wait for predicted steps where it pays."""
        plan = padding_plan(costs)
        with self._wake:
            self.padding = plan
            self._cost_per_block = batch_cost(costs, plan)
            self.gather = gather and self.batching

    def rows_for(self, sessions: int) -> int:
        """Rows a batched step of ``sessions`` sessions runs with (the padding plan)."""
        return self.padding[sessions - 1] if sessions <= len(self.padding) else sessions

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not (self._decodes or self._prompts or self._calls or self._closing):
                    self._wake.wait()
                if self._closing:
                    return
                self._gather_steps()
                if self._closing:
                    return
                calls = list(self._calls)
                self._calls.clear()
                decodes = [self._decodes.popleft() for _ in range(min(self.max_batch, len(self._decodes)))]
                prompt = self._prompts[0] if self._prompts else None
            for fn, future, loop in calls:
                self.use_threads(1 << 30)  # profiling and other calls: as the node is set
                try:
                    _settle(loop, future, result=fn())
                except Exception as e:  # noqa: BLE001 - delivered to the caller, who decides
                    _settle(loop, future, error=e)
            began = time.perf_counter()
            self._run_decodes(decodes)
            prompt_tokens = self._run_chunk(prompt) if prompt is not None else 0
            if self.on_iteration is not None and (decodes or prompt_tokens):
                self.on_iteration(len(decodes), prompt_tokens, time.perf_counter() - began)

    def _gather_steps(self) -> None:
        """(Compute thread, holding _wake.) Wait for steps predicted to arrive soon when the
        bigger batch pays for the wait (batch_policy.gather_wait); only while nothing but
        batchable decoding steps waits."""
        if not self.gather or self._prompts or self._calls or not self._decodes:
            return
        if not all(job.batchable for job in self._decodes):
            return
        first = self._decodes[0]
        blocks, per_block = first.end - first.start, self._cost_per_block
        now = time.perf_counter()
        max_wait = GATHER_SINGLE_STEPS * blocks * per_block(1)
        wait, more = gather_wait(
            len(self._decodes), self._arrivals.expected(now), lambda n: blocks * per_block(n), max_wait
        )
        if not more:
            return
        wanted, deadline = len(self._decodes) + more, now + min(max_wait, wait + max_wait / 4)
        while len(self._decodes) < wanted and not (self._prompts or self._calls or self._closing):
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wake.wait(left)

    def _run_decodes(self, jobs: list[StepJob]) -> None:
        groups: dict[tuple[int, int], list[StepJob]] = {}
        for job in jobs:
            if self.batching and job.batchable:
                groups.setdefault((job.start, job.end), []).append(job)
            else:
                self._run_alone(job)
        for group in groups.values():
            if len(group) == 1:
                self._run_alone(group[0])
            else:
                self._run_batch(group)

    def _run_alone(self, job: StepJob, checked: bool = False) -> None:
        """Run one step by itself (``checked``: its input was already found finite)."""
        self.use_threads(job.hidden.shape[0] * job.hidden.shape[1])
        began = time.perf_counter()
        try:
            if not checked:
                self.backend.check_finite(job.hidden)
            out = self.backend.forward(job.hidden, job.start, job.end, job.cache, job.mask, job.positions)
        except Exception as e:  # noqa: BLE001 - the request's failure, answered to its client
            _settle(job.loop, job.future, error=e)
            return
        job.started, job.compute_s = began, time.perf_counter() - began
        self._finish(job, out)

    def _run_batch(self, group: list[StepJob]) -> None:
        ready = []
        for job in group:  # one bad input must not fail the others
            try:
                self.backend.check_finite(job.hidden)
                ready.append(job)
            except Exception as e:  # noqa: BLE001
                _settle(job.loop, job.future, error=e)
        if len(ready) < 2:
            for job in ready:
                self._run_alone(job, checked=True)
            return
        rows = self.rows_for(len(ready))
        self.use_threads(rows)
        began = time.perf_counter()
        caches = [job.cache for job in ready]
        try:
            outs = self.backend.forward_batch(
                [job.hidden for job in ready], ready[0].start, ready[0].end, caches, rows=rows
            )
        except Exception as e:  # noqa: BLE001 - a batch failing fails each of its steps
            logger.exception("batched step failed")
            for job in ready:
                _settle(job.loop, job.future, error=e)
            return
        spent = time.perf_counter() - began
        for job, out in zip(ready, outs, strict=True):
            job.started, job.compute_s, job.batch = began, spent, len(ready)
            self._finish(job, out)

    def _run_chunk(self, job: StepJob) -> int:
        """Run the next chunk of ``job``'s tokens; returns how many ran."""
        began = time.perf_counter()
        chunk = job.tokens if job.cache is None else min(self.prefill_chunk, job.tokens - job.done)
        part = slice(job.done, job.done + chunk)
        try:
            if job.done == 0:
                self.backend.check_finite(job.hidden)
                job.started = began
            self.use_threads(job.hidden.shape[0] * chunk)
            mask = job.mask[:, part] if job.mask is not None else None
            positions = job.positions[:, part] if job.positions is not None else None
            out = self.backend.forward(job.hidden[:, part], job.start, job.end, job.cache, mask, positions)
        except Exception as e:  # noqa: BLE001 - the request's failure, answered to its client
            self._drop_prompt(job)
            _settle(job.loop, job.future, error=e)
            return chunk
        job.compute_s += time.perf_counter() - began
        job.outputs.append(out)
        job.done += chunk
        if job.done == job.tokens:
            self._drop_prompt(job)
            self._finish(job, job.outputs[0] if len(job.outputs) == 1 else torch.cat(job.outputs, dim=1))
        return chunk

    def _drop_prompt(self, job: StepJob) -> None:
        with self._wake:
            self._prompts.remove(job)

    def _finish(self, job: StepJob, out: torch.Tensor) -> None:
        if self.gather and job.batchable:
            with self._wake:
                self._arrivals.returned(job.cache, time.perf_counter())
        queue_s = max(0.0, time.perf_counter() - job.enqueued - job.compute_s)
        _settle(job.loop, job.future, result=StepResult(out, queue_s, job.compute_s, job.batch))


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any = None, error: Any = None) -> None:
    """Complete ``future`` from the compute thread (if its waiter has not given up)."""

    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
