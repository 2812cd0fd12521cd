"""The SwarmBee exception tree.

Every error that SwarmBee raises on purpose derives from :class:`SwarmNodeError`, so a
caller can catch one class and still tell the cases apart::

    SwarmNodeError
    ├── ConfigError                 invalid user input: flags, env, config file, arguments
    ├── ModelLoadError              checkpoint missing, unsupported family, tensors absent
    ├── SwarmUnavailable            cannot reach the swarm (DHT did not start, no peers)
    ├── NoServersForBlocks          no live node serves some blocks (after a bounded wait)
    ├── SessionError                client-side session misuse
    │   ├── SessionLengthExceeded   more tokens than the session's max_length
    │   └── SessionClosed           the session was closed or failed earlier
    └── RemoteError                 a node answered a request with an error
        ├── InvalidRequest          the request was malformed (shape, dtype, bytes, range)
        ├── UnknownSession          the node holds no such session
        ├── UpstreamMissing         forwarding: a step's input never reached the node (it is fine)
        ├── CacheExhausted          the node's KV-cache budget cannot fit the session: retry later
        │   └── PeerLimitExceeded   this peer already holds its share of the node (sessions, cache)
        ├── NodeBusy                this peer sends the node too many requests: retry later
        │   └── NodeAtCapacity      admission control: one more session would make the node too slow
        ├── VerificationFailed      a spot-check found the node's output wrong (raised by the client)
        ├── Unauthorized            a private swarm's node refused a caller without the swarm key
        ├── NodeUnavailable         the node is draining/offline, or did not answer
        ├── NodeInternalError       the node failed while computing
        └── ModelMismatch           the node's checkpoint differs from the client's (config hashes)

``NodeBusy`` and ``CacheExhausted`` with a hint are *retryable* (``error.retryable``, the
node's ``retry_after`` hint): they mean load, and a client waits or uses another replica without
banning or penalizing the node.

Nodes send errors as a code plus a message (see :mod:`swarmnode.net.protocol`);
:func:`remote_error_from_code` maps a code back onto the tree above.
"""

from __future__ import annotations


class SwarmNodeError(Exception):
    """Base class of every error SwarmBee raises on purpose."""


class ConfigError(SwarmNodeError, ValueError):
    """A flag, environment variable, config file entry or argument is invalid."""


class ModelLoadError(SwarmNodeError):
    """A checkpoint could not be found, parsed or is of an unsupported family."""


class SwarmUnavailable(SwarmNodeError):
    """The DHT could not be started or no peer of the swarm could be reached."""


class NoServersForBlocks(SwarmNodeError):
    """No live node serves some of the blocks a chain needs."""

    def __init__(self, blocks: list[int], model: str, waited_s: float):
        self.blocks = list(blocks)
        self.model = model
        self.waited_s = waited_s
        super().__init__(
            f"no live node of model {model!r} serves blocks {_ranges(self.blocks)} (waited {waited_s:.1f} s)"
        )


class SessionError(SwarmNodeError):
    """The client-side inference session was misused."""


class SessionLengthExceeded(SessionError):
    """A session was asked to hold more tokens than its max_length."""


class SessionClosed(SessionError):
    """The session was closed, or failed earlier and cannot continue."""


class RemoteError(SwarmNodeError):
    """A node answered with an error. ``code`` is the wire code, ``peer_id`` the node."""

    code = "remote_error"
    retryable = False  # load, not failure: clients wait or go elsewhere, without a ban or penalty

    def __init__(self, message: str, peer_id: str | None = None, retry_after: float | None = None):
        self.peer_id = peer_id
        self.message = message
        self.retry_after = retry_after  # seconds, the node's hint (retryable errors only)
        where = f" (node {peer_id})" if peer_id else ""
        super().__init__(f"{message}{where}")


class InvalidRequest(RemoteError):
    """The node rejected a malformed request."""

    code = "invalid_request"


class UnknownSession(RemoteError):
    """The node holds no session with this id."""

    code = "unknown_session"


class CacheExhausted(RemoteError):
    """The node's KV-cache budget cannot fit the session. Retryable (load, not failure) when the
    node sends a ``retry_after`` hint: room comes back as sessions end. Without one the session
    can never fit there (it asks for more than the node's whole budget, or than one peer's share)."""

    code = "cache_exhausted"

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.retry_after is not None


class PeerLimitExceeded(CacheExhausted):
    """This peer already holds its share of the node (sessions or KV cache); same wire code."""


class UpstreamMissing(RemoteError):
    """Forwarding: the node waited for a step's input from the previous hop (or the client) in
    vain. The node itself is fine: the client relays that step to it instead."""

    code = "upstream_missing"


class VerificationFailed(RemoteError):
    """A node's output disagreed with an independent replica of its span (a client's spot-check)."""

    code = "verification_failed"


class NodeBusy(RemoteError):
    """The node refuses for now: a per-peer rate limit, or admission control (one more session
    would push its projected step time past its target). Retryable, with a ``retry_after`` hint."""

    code = "node_busy"
    retryable = True


class NodeAtCapacity(NodeBusy):
    """Admission control: one more session would push the node past its step-time target; same wire code."""


class Unauthorized(RemoteError):
    """The node serves a private swarm and the caller did not prove it holds the swarm key."""

    code = "unauthorized"


class NodeUnavailable(RemoteError):
    """The node is draining or offline, or did not answer in time."""

    code = "node_unavailable"


class NodeInternalError(RemoteError):
    """The node failed while computing."""

    code = "internal_error"


class ModelMismatch(RemoteError):
    """Two sides disagree on the checkpoint: their config hashes differ.

    Raised by a node asked to serve a session for another checkpoint, by a client whose
    checkpoint differs from the one the swarm announces, and by a node joining a swarm
    that serves another checkpoint under the same model id.
    """

    code = "model_mismatch"


_REMOTE_ERRORS = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        UnknownSession,
        UpstreamMissing,
        CacheExhausted,
        NodeBusy,
        Unauthorized,
        NodeUnavailable,
        NodeInternalError,
        ModelMismatch,
    )
}
ERROR_CODES: tuple[str, ...] = tuple(sorted(_REMOTE_ERRORS))  # every code a node may answer with


def remote_error_from_code(
    code: str, message: str, peer_id: str | None = None, retry_after: float | None = None
) -> RemoteError:
    """Build the exception for an error code sent by a node (unknown codes → RemoteError)."""
    return _REMOTE_ERRORS.get(code, RemoteError)(message, peer_id, retry_after)


def _ranges(blocks: list[int]) -> str:
    """Render sorted block indices compactly, e.g. [3, 4, 5, 7] → '3:6, 7'."""
    parts, start, prev = [], None, None
    for b in sorted(blocks):
        if start is None:
            start = prev = b
        elif b == prev + 1:
            prev = b
        else:
            parts.append(f"{start}:{prev + 1}" if prev > start else str(start))
            start = prev = b
    if start is not None:
        parts.append(f"{start}:{prev + 1}" if prev > start else str(start))
    return ", ".join(parts) or "none"
