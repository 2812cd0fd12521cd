"""The step scheduler in-process (no sockets): every forward pass on its one thread, decoding
steps of concurrent sessions batched, prompts chunked between them, exact sessions alone."""

import asyncio
import threading

import pytest
import torch

from swarmnode.errors import InvalidRequest
from swarmnode.models import load_blocks, load_model_spec
from swarmnode.server.backend import BlockBackend
from swarmnode.server.cache import SessionCache
from swarmnode.server.scheduler import GATHER_SINGLE_STEPS, StepScheduler


@pytest.fixture(scope="module")
def backend(llama_path):
    spec = load_model_spec(llama_path)
    return BlockBackend(spec, load_blocks(spec, 0, 4, "cpu", torch.float32), "cpu", torch.float32)


def new_cache(backend, max_length=1024) -> SessionCache:
    kv_heads, head_dim = backend.spec.family.kv_heads_and_dim(backend.spec.config)
    return SessionCache(0, 4, 1, max_length, kv_heads, head_dim, torch.float32, "cpu")


def prefilled(backend, tokens: int, seed: int) -> SessionCache:
    cache = new_cache(backend)
    backend.forward(
        torch.randn(1, tokens, backend.hidden_size, generator=torch.Generator().manual_seed(seed)), 0, 4, cache
    )
    return cache


def clone(cache: SessionCache) -> SessionCache:
    copy = SessionCache(
        cache.start, cache.end, 1, cache.max_length, *cache.shape[2:3], cache.shape[4], torch.float32, "cpu"
    )
    copy.keys, copy.values, copy.length = cache.keys.clone(), cache.values.clone(), cache.length
    return copy


def run_gated(scheduler: StepScheduler, submissions):
    """Hold the compute thread until every submission is queued, so one iteration sees them all;
    returns the results (or exceptions) and the order in which they completed."""

    async def main():
        gate, order = threading.Event(), []
        blocker = asyncio.ensure_future(scheduler.call(gate.wait))
        await asyncio.sleep(0.05)  # the thread is now inside the call

        async def one(index, coro):
            try:
                return await coro
            finally:
                order.append(index)

        tasks = [asyncio.ensure_future(one(i, s())) for i, s in enumerate(submissions)]
        await asyncio.sleep(0.05)  # all queued
        gate.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, order

    return asyncio.run(main())


def test_decoding_steps_of_concurrent_sessions_share_one_forward_and_exact_ones_do_not(backend):
    scheduler = StepScheduler(backend)
    try:
        caches = [prefilled(backend, n, seed) for seed, n in enumerate((3, 9, 17, 5))]
        alone = [clone(c) for c in caches]
        steps = [
            torch.randn(1, 1, backend.hidden_size, generator=torch.Generator().manual_seed(50 + i)) for i in range(4)
        ]
        exact = [False, False, False, True]
        results, _ = run_gated(
            scheduler,
            [lambda i=i: scheduler.submit(steps[i], 0, 4, caches[i], exact=exact[i]) for i in range(4)],
        )
        expected = [backend.forward(steps[i], 0, 4, alone[i]) for i in range(4)]
        assert [r.batch for r in results] == [3, 3, 3, 1]
        for result, reference in zip(results[:3], expected[:3], strict=True):
            assert (result.output - reference).norm() / reference.norm() < 1e-5
        assert torch.equal(results[3].output, expected[3]), "an exact session computes bitwise as alone"
        assert [c.length for c in caches] == [4, 10, 18, 6]
    finally:
        scheduler.close()


def test_a_padded_batch_gives_each_session_its_own_result(backend):
    scheduler = StepScheduler(backend)
    scheduler.padding = (1, 4, 4, 4)  # as measured on a CPU where 2-3 rows cost more than 4
    try:
        caches = [prefilled(backend, n, seed) for seed, n in enumerate((3, 11))]
        alone = [clone(c) for c in caches]
        steps = [
            torch.randn(1, 1, backend.hidden_size, generator=torch.Generator().manual_seed(70 + i)) for i in (0, 1)
        ]
        calls = []
        original = backend.forward_batch

        def spy(*args, **kwargs):
            calls.append(kwargs.get("rows"))
            return original(*args, **kwargs)

        backend.forward_batch = spy
        try:
            for _ in range(2):  # twice: the padding rows' caches are reused and must start empty
                results, _ = run_gated(
                    scheduler, [lambda i=i: scheduler.submit(steps[i], 0, 4, caches[i]) for i in (0, 1)]
                )
                expected = [backend.forward(steps[i], 0, 4, alone[i]) for i in (0, 1)]
                for result, reference in zip(results, expected, strict=True):
                    assert result.batch == 2
                    assert (result.output - reference).norm() / reference.norm() < 1e-5
        finally:
            del backend.forward_batch
    finally:
        scheduler.close()
    assert calls == [4, 4]
    assert [c.length for c in caches] == [5, 13]
    assert [c.length for kept in backend._pad_caches.values() for c in kept] == [0, 0]


def test_every_forward_runs_on_the_compute_thread(backend, monkeypatch):
    seen = []
    for name in ("forward", "forward_batch"):
        original = getattr(backend, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    scheduler = StepScheduler(backend, prefill_chunk=8)
    try:
        caches = [new_cache(backend) for _ in range(3)]
        run_gated(
            scheduler,
            [
                lambda: scheduler.submit(torch.randn(1, 20, backend.hidden_size), 0, 4, caches[0]),
                lambda: scheduler.submit(torch.randn(1, 1, backend.hidden_size), 0, 4, caches[1]),
                lambda: scheduler.submit(torch.randn(1, 1, backend.hidden_size), 0, 4, caches[2]),
                lambda: scheduler.submit(torch.randn(1, 5, backend.hidden_size), 0, 4, None),
            ],
        )
    finally:
        scheduler.close()
    assert len(seen) >= 4 and set(seen) == {"swarmnode-compute"}


def test_a_long_prompt_is_chunked_and_decoding_steps_do_not_wait_for_it(backend):
    scheduler = StepScheduler(backend, prefill_chunk=64)
    try:
        prompt = torch.randn(1, 200, backend.hidden_size, generator=torch.Generator().manual_seed(7))
        prompt_cache, by_hand = new_cache(backend), new_cache(backend)
        decoders = [prefilled(backend, 4, seed) for seed in (1, 2)]
        step = torch.randn(1, 1, backend.hidden_size)
        submissions = [lambda: scheduler.submit(prompt, 0, 4, prompt_cache)]
        submissions += [lambda c=c: scheduler.submit(step, 0, 4, c) for c in decoders]
        results, order = run_gated(scheduler, submissions)
        assert order.index(0) == 2, f"the decoding steps finish first (completion order {order})"
        # 4 chunks (64, 64, 64, 8), bitwise what the same chunks compute one after another
        chunks = [backend.forward(prompt[:, i : i + 64], 0, 4, by_hand) for i in range(0, 200, 64)]
        assert torch.equal(results[0].output, torch.cat(chunks, 1))
        whole = backend.forward(prompt, 0, 4, new_cache(backend))
        assert (results[0].output - whole).norm() / whole.norm() < 1e-5
        assert prompt_cache.length == 200
    finally:
        scheduler.close()


def test_a_bad_input_fails_its_own_step_only(backend):
    scheduler = StepScheduler(backend)
    try:
        caches = [prefilled(backend, 3, seed) for seed in range(3)]
        bad = torch.full((1, 1, backend.hidden_size), float("nan"))
        good = torch.randn(1, 1, backend.hidden_size)
        results, _ = run_gated(
            scheduler,
            [lambda: scheduler.submit(good, 0, 4, caches[0]), lambda: scheduler.submit(bad, 0, 4, caches[1])]
            + [lambda: scheduler.submit(good, 0, 4, caches[2])],
        )
        assert isinstance(results[1], InvalidRequest) and caches[1].length == 3
        assert results[0].batch == results[2].batch == 2 and caches[0].length == caches[2].length == 4
    finally:
        scheduler.close()


def test_batching_off_runs_each_step_alone(backend):
    scheduler = StepScheduler(backend, batching=False)
    try:
        caches = [prefilled(backend, 3, seed) for seed in range(3)]
        results, _ = run_gated(
            scheduler, [lambda c=c: scheduler.submit(torch.randn(1, 1, backend.hidden_size), 0, 4, c) for c in caches]
        )
        assert [r.batch for r in results] == [1, 1, 1]
    finally:
        scheduler.close()


def test_closing_fails_what_is_still_queued(backend):
    scheduler = StepScheduler(backend)

    async def main():
        gate = threading.Event()
        blocker = asyncio.ensure_future(scheduler.call(gate.wait))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(
            scheduler.submit(torch.randn(1, 1, backend.hidden_size), 0, 4, new_cache(backend))
        )
        await asyncio.sleep(0.05)
        closer = asyncio.get_running_loop().run_in_executor(None, scheduler.close)
        await asyncio.sleep(0.05)
        gate.set()
        await closer
        await blocker
        with pytest.raises(RuntimeError, match="shutting down"):
            await queued

    asyncio.run(main())


def batches_with_a_late_session(backend, costs, gather: bool) -> list[tuple[int, int]]:
    """Three rounds of two sessions' decoding steps, session 1 always 0.1 s after session 0;
    returns each round's (batch of session 0's step, batch of session 1's)."""
    scheduler = StepScheduler(backend)
    scheduler.calibrate(costs, gather=gather)
    caches = [new_cache(backend) for _ in range(2)]

    def step(i):
        return scheduler.submit(torch.randn(1, 1, backend.hidden_size), 0, 4, caches[i])

    async def rounds():
        batches = []
        for _ in range(3):
            first = asyncio.ensure_future(step(0))
            await asyncio.sleep(0.1)
            second = await step(1)
            batches.append(((await first).batch, second.batch))
        return batches

    try:
        return asyncio.run(rounds())
    finally:
        scheduler.close()


def test_an_iteration_waits_for_a_step_predicted_to_arrive_when_the_bigger_batch_pays(backend):
    # Calibrated as a device where a batch of 2 costs what 1 does (0.1 s per block): serving one
    # step now gives 2.5 steps/s, waiting 0.1 s for the other session's gives 4.
    costs = [0.1] * 4
    assert GATHER_SINGLE_STEPS * 4 * costs[0] > 0.2  # the wait is within the bound
    gathered = batches_with_a_late_session(backend, costs, gather=True)
    assert gathered[-1] == (2, 2), gathered  # by the third round the gap is known: one batch
    assert batches_with_a_late_session(backend, costs, gather=False) == [(1, 1)] * 3
