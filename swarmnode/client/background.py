"""A client's background work, kept off its sessions' prompt steps.

What a client does in the background — re-reading the swarm's records, pinging nodes, sharing
what it measured — costs CPU in every process it reaches, not only its own: one read of a
30-block model's records takes ~9 ms and ~19 ms of CPU across the client's DHT peer, the
daemons and the nodes' DHT peers on the development machine (it was ~24 and 52-64 ms with
one DHT key per block; docs/token_budget.md). Started as a session opens (a stale view is
re-read right when it is served), that work ran beside the session's first step, the prompt,
which is the step a user waits for most and the one that uses every core of its nodes.

So work asked for while a prompt step is in flight (a session's first step, or any step of
several tokens: ``InferenceSession`` holds and releases) waits until that step has its
answer (:meth:`BackgroundWork.release`), or ``quiet_limit`` seconds at most: a client with
sessions always opening still refreshes its view. Work asked for at other times starts at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)
QUIET_LIMIT_S = 2.0  # the longest background work waits for prompt steps in flight


class BackgroundWork:
    """Fire-and-forget work on the client's event loop (best effort: failures are logged),
    held back while any session's prompt step is in flight. Every method runs on that loop."""

    def __init__(self, quiet_limit: float = QUIET_LIMIT_S):
        if quiet_limit < 0:
            raise ValueError(f"quiet_limit must be >= 0, got {quiet_limit}")
        self.quiet_limit = quiet_limit
        self.tasks: set[asyncio.Task] = set()
        self._holds = 0  # prompt steps in flight
        self._waiting: list[tuple[Callable[[], Awaitable[Any]], str]] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """How many pieces of work wait for prompt steps to finish."""
        return len(self._waiting)

    def start(self, work: Callable[[], Awaitable[Any]], what: str) -> None:
        """Run ``work()`` now, or once no prompt step is in flight (``quiet_limit`` at most).
        ``work`` is a factory, so that work that never starts leaves no coroutine behind."""
        if not self._holds:
            self._run(work, what)
            return
        self._waiting.append((work, what))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.quiet_limit, self._start_waiting)

    def hold(self) -> None:
        """A session's prompt step is on its way: work asked for from now on waits."""
        self._holds += 1

    def release(self) -> None:
        """That prompt step has its answer (or failed): waiting work starts once none is left."""
        if self._holds == 0:
            raise RuntimeError("release() without a matching hold()")
        self._holds -= 1
        if self._holds == 0:
            self._start_waiting()

    def cancel_all(self) -> None:
        """Drop waiting work and cancel what runs (the connection is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        for task in list(self.tasks):
            task.cancel()

    def _start_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        for work, what in waiting:
            self._run(work, what)

    def _run(self, work: Callable[[], Awaitable[Any]], what: str) -> None:
        task = asyncio.ensure_future(work())
        self.tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            self.tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.debug("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)
