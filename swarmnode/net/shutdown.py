"""Shutting down beside a p2p daemon that may be gone.

A process's p2pd can die before the process does (killed, out of memory). The control calls
that undo its registrations then wait on a socket nobody answers, and a SIGTERM would never
finish. Every such call on a shutdown path goes through :func:`bounded`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

logger = logging.getLogger(__name__)

# A live daemon answers these in milliseconds; a dead one never does.
DAEMON_CALL_TIMEOUT_S = 2.0


async def bounded(call: Awaitable, what: str, timeout: float = DAEMON_CALL_TIMEOUT_S) -> bool:
    """Await ``call`` for at most ``timeout`` seconds. False if it timed out or failed (logged,
    not raised: a shutdown goes on either way)."""
    try:
        await asyncio.wait_for(call, timeout)
        return True
    except TimeoutError:
        logger.warning("%s did not finish in %.0f s (is the p2p daemon gone?): going on", what, timeout)
    except Exception as e:  # noqa: BLE001 - the daemon may be gone already
        logger.debug("%s failed: %s", what, e)
    return False
