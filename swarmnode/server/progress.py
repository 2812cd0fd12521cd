"""Progress of a node loading its weights: a bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

logger = logging.getLogger(__name__)


class LoadProgress:
    """A ``load_blocks`` progress callback: ``progress(done, total)`` after each block.

    On a terminal it draws a tqdm bar (blocks, rate, time left); in a log file or a pipe, where
    a bar would be noise, it logs one line per block with the elapsed time.
    """

    def __init__(self, stream: TextIO | None = None, what: str = "loading blocks"):
        self.stream = stream if stream is not None else sys.stderr
        self.what = what
        self._bar: tqdm | None = None
        self._began = time.monotonic()

    @property
    def interactive(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.interactive:
            if self._bar is None:
                self._bar = tqdm(total=total, desc=self.what, unit="block", file=self.stream, leave=True)
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
        else:
            elapsed = time.monotonic() - self._began
            logger.info(
                "%s: %d/%d (%.0f%%), %.1f s since the node started", self.what, done, total, 100 * done / total, elapsed
            )
