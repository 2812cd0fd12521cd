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
