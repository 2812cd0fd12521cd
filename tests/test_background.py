"""A client's background work waits while a prompt is in flight (swarmnode/client/background.py)."""

import asyncio
import time

import pytest
import torch

from swarmnode.client.background import BackgroundWork
from tests.conftest import swarm_client


def run(coro):
    return asyncio.run(coro)


def test_work_starts_at_once_when_no_prompt_is_in_flight():
    async def scenario():
        work, done = BackgroundWork(), []
        work.start(lambda: asyncio.sleep(0, done.append("ran")), "test")
        await asyncio.sleep(0.01)
        return done, work.tasks

    done, tasks = run(scenario())
    assert done == ["ran"] and not tasks


def test_work_waits_for_every_held_prompt_and_then_starts():
    async def scenario():
        work, started = BackgroundWork(quiet_limit=10.0), []
        work.hold()
        work.hold()
        work.start(lambda: asyncio.sleep(0, started.append("a")), "a")
        work.start(lambda: asyncio.sleep(0, started.append("b")), "b")
        await asyncio.sleep(0.05)
        before = list(started)
        work.release()
        await asyncio.sleep(0.05)
        after_one = list(started)
        work.release()
        await asyncio.sleep(0.05)
        return before, after_one, started, work.waiting

    before, after_one, started, waiting = run(scenario())
    assert before == [] and after_one == []  # one prompt is still in flight
    assert started == ["a", "b"] and waiting == 0


def test_held_work_starts_after_the_quiet_limit_even_if_prompts_keep_coming():
    async def scenario():
        work, started = BackgroundWork(quiet_limit=0.2), []
        work.hold()  # never released: a client whose sessions keep opening
        began = time.monotonic()
        work.start(lambda: asyncio.sleep(0, started.append(time.monotonic() - began)), "refresh")
        await asyncio.sleep(0.1)
        early = list(started)
        await asyncio.sleep(0.3)
        return early, started

    early, started = run(scenario())
    assert early == []
    assert len(started) == 1 and 0.15 <= started[0] < 0.4


def test_failing_work_is_logged_not_raised_and_release_needs_a_hold(caplog):
    async def scenario():
        work = BackgroundWork()

        async def broken():
            raise OSError("the DHT is gone")

        with caplog.at_level("DEBUG", logger="swarmnode.client.background"):
            work.start(broken, "a refresh")
            await asyncio.sleep(0.01)
        return work

    work = run(scenario())
    assert "a refresh failed: the DHT is gone" in caplog.text
    with pytest.raises(RuntimeError):
        work.release()
    with pytest.raises(ValueError):
        BackgroundWork(quiet_limit=-1)


def test_closing_drops_waiting_work_without_starting_it_and_cancels_running_work():
    async def scenario():
        work, made = BackgroundWork(quiet_limit=10.0), []

        def factory():
            made.append("coroutine")
            return asyncio.sleep(10)

        work.start(factory, "running")
        work.hold()
        work.start(factory, "waiting")
        running = next(iter(work.tasks))
        work.cancel_all()
        await asyncio.sleep(0.01)
        return made, running, work.waiting

    made, running, waiting = run(scenario())
    assert made == ["coroutine"]  # the waiting one's coroutine was never created
    assert running.cancelled() and waiting == 0


@pytest.mark.swarm
def test_a_prompt_is_answered_before_the_refresh_it_asked_for_starts(llama_swarm, llama_path):
    period = 0.5  # a view older than this is re-read in the background when it is served
    with swarm_client(llama_swarm, llama_path, swarm_refresh_period=period, keep_fresh_for=0.0) as model:
        ids = torch.tensor([[5, 6, 7]])
        model.generate(ids, max_new_tokens=2)  # the route is cached
        time.sleep(2 * period)  # stale, still servable: the next session re-reads it in the background
        connection, events = model.connection, []
        fetch, release = connection._fetch_snapshot, connection.work.release

        async def recording_fetch(*args):
            events.append("refresh")
            return await fetch(*args)

        def recording_release():
            events.append("prompt answered")
            release()

        connection._fetch_snapshot, connection.work.release = recording_fetch, recording_release
        model.generate(ids, max_new_tokens=2)
        deadline = time.monotonic() + 10
        while "refresh" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events[:2] == ["prompt answered", "refresh"]
