"""Tokens handed from the client's event loop to the caller's thread without stopping generation.

``stream_tokens`` used to run one token per call into the loop: the loop waited for the caller's
thread to take each token and ask for the next, two thread wake-ups on every token's path
(~0.3 ms each way on the development machine, docs/token_budget.md). :class:`AheadStream` runs
the generation on the loop instead and hands each token over through a queue, so the next
step starts at once; it stays at most ``lookahead`` tokens ahead of a caller that is slower,
and stops at a token boundary when the caller stops reading (never mid-step, so a session the
caller passed in stays usable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import AsyncIterator
from typing import Any

_END = object()


class AheadStream:
    """Iterate an async generator that runs on ``loop`` from another thread, ``lookahead`` ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, items: AsyncIterator[Any], lookahead: int = 2):
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.loop, self.lookahead = loop, lookahead
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pulled = 0  # items the generator made (written by the loop only)...
        self.produced = 0  # ...and of those, the ones queued for the caller (a stop holds the last back)
        self.taken = 0  # items the caller took (written by the caller only)
        self._stop = False
        self._waiting = False  # the pump waits for the caller to take an item
        self._room: asyncio.Event | None = None
        self._done = asyncio.run_coroutine_threadsafe(self._pump(items), loop)

    async def _pump(self, items: AsyncIterator[Any]) -> None:
        self._room = asyncio.Event()
        failure: BaseException | None = None
        try:
            if not self._stop:  # closed before it began: not even the first item
                async for item in items:
                    self.pulled += 1
                    await self._wait_for_room()
                    if self._stop:
                        break
                    self._queue.put(item)
                    self.produced += 1
        except Exception as e:  # noqa: BLE001 - every failure of the generation is the caller's to see
            failure = e
        except BaseException as e:  # cancelled (the loop is shutting down): the caller learns it too
            failure = e
            raise
        finally:
            try:
                await items.aclose()
            finally:
                self._queue.put((_END, failure))

    async def _wait_for_room(self) -> None:
        while not self._stop and self.produced - self.taken >= self.lookahead:
            self._waiting = True
            self._room.clear()
            if self._stop or self.produced - self.taken < self.lookahead:  # the caller moved meanwhile
                break
            await self._room.wait()
        self._waiting = False

    def _wake_pump(self) -> None:
        if self._waiting and self._room is not None:
            self.loop.call_soon_threadsafe(self._room.set)

    def get(self) -> tuple[bool, Any]:
        """``(True, item)``, or ``(False, None)`` once the generator has finished; raises what it raised."""
        item = self._queue.get()
        if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
            self._queue.put(item)  # later calls see the end too
            if item[1] is not None:
                raise item[1]
            return False, None
        self.taken += 1
        self._wake_pump()
        return True, item

    def close(self, timeout: float | None = None) -> int:
        """Stop at the next item boundary and wait for the generator to finish (its ``finally``
        blocks run on the loop); returns how many items the generator made that were never taken."""
        self._stop = True
        if self._room is not None:
            self.loop.call_soon_threadsafe(self._room.set)
        if self.loop.is_running():
            try:
                self._done.result(timeout)
            except concurrent.futures.CancelledError:
                pass  # the loop cancelled it: the caller has been told through get()
        return self.pulled - self.taken
