"""server/threads.py: one-off multi-threaded work runs on a thread that exits, the event loop
stays on one torch thread, and errors come back to the caller."""

import asyncio
import threading

import pytest
import torch

from swarmnode.server.threads import confine_to_one_thread, node_threads, run_in_passing_thread


def test_work_runs_with_the_given_threads_on_a_thread_that_is_gone_afterwards():
    seen = {}

    def work():
        seen["thread"] = threading.current_thread()
        seen["threads"] = torch.get_num_threads()
        return torch.ones(4).sum().item()

    assert asyncio.run(run_in_passing_thread(work, 2)) == 4.0
    assert seen["threads"] == 2
    assert seen["thread"] is not threading.main_thread() and not seen["thread"].is_alive()


def test_errors_reach_the_caller_and_nonsense_is_refused():
    def broken():
        raise RuntimeError("no such block")

    with pytest.raises(RuntimeError, match="no such block"):
        asyncio.run(run_in_passing_thread(broken, 1))
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(run_in_passing_thread(lambda: None, 0))


def test_the_event_loop_thread_is_confined_to_one_torch_thread():
    before = torch.get_num_threads()
    try:
        assert node_threads(3) == 3 and node_threads(0) == before
        confine_to_one_thread()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_caller_that_gives_up_does_not_break_the_work_thread():
    release, finished = threading.Event(), threading.Event()

    def slow():
        release.wait(5)
        finished.set()
        return 1

    async def give_up():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(run_in_passing_thread(slow, 1), 0.05)

    errors = []
    previous, threading.excepthook = threading.excepthook, errors.append
    try:
        asyncio.run(give_up())  # the loop is closed now
        release.set()
        assert finished.wait(5)
        for thread in threading.enumerate():
            if thread.name == "swarmnode-load":
                thread.join(5)
    finally:
        threading.excepthook = previous
    assert errors == []  # delivering to the closed loop raised nothing
