"""Which threads of a node run torch's intra-op parallelism (OpenMP), and why only one does.

libgomp keeps a team of worker threads for every thread that has run a parallel region, for
as long as that thread lives. Once a process holds more such workers than there are CPUs,
every team spins only briefly at its barriers before its workers sleep (libgomp's throttled
spin), so each of the hundreds of small parallel regions of a forward pass waits for a
sleeping worker to wake. Measured on the development machine (2 cores; a 40-token prompt's
matmuls on a worker thread with 2 threads): 21 ms alone, 38-42 ms once the main thread had
run a single parallel operation — for as long as the main thread lived, whatever it did
after. A node's prompts ran about that much slower than the same blocks in-process.

So a node confines its event loop (the main thread) to one torch thread before it does any
torch work, runs every forward pass on its compute thread (server/scheduler.py) with the
node's threads, and does its multi-threaded one-off work — loading and packing blocks — on
a thread that exits when the work is done, which frees that thread's team.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def node_threads(configured: int) -> int:
    """The intra-op threads a node computes with: ``configured`` if positive, else torch's
    default for this machine (read before :func:`confine_to_one_thread` changes it)."""
    return configured if configured > 0 else torch.get_num_threads()


def confine_to_one_thread() -> None:
    """Make the calling thread's torch work single-threaded, so it never starts an OpenMP team."""
    torch.set_num_threads(1)


async def run_in_passing_thread(fn: Callable[[], T], threads: int, name: str = "swarmnode-load") -> T:
    """Run ``fn`` with ``threads`` intra-op threads on a new thread that exits afterwards (its
    OpenMP team goes with it), without blocking the event loop; returns or raises what ``fn`` did."""
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def work() -> None:
        torch.set_num_threads(threads)
        try:
            outcome = (fn(), None)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller, who decides
            outcome = (None, e)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the node was stopped): nobody waits
            loop.call_soon_threadsafe(deliver, *outcome)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        return await done
    finally:
        if done.done() and not done.cancelled():  # fn returned: the thread is exiting, and its
            thread.join()  # team is freed as it does, before the compute thread runs anything
