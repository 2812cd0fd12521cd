"""KV caches of a node's inference sessions, under one node-wide budget.

A session's cache is preallocated at open for its whole ``max_length`` (so a session
that was admitted never runs out of room mid-generation) and counted against the
node's budget in *block-tokens*: batch × max_length × blocks. Closing the session
returns its room at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from swarmnode.errors import CacheExhausted, InvalidRequest, UnknownSession
from swarmnode.server.admission import Returns


class SessionCache:
    """The keys and values of one session over a span of blocks.

    It is passed to transformers' attention modules as their ``cache`` argument:
    ``update`` writes the new keys/values of block ``layer_idx`` after the committed
    prefix and returns the whole prefix; ``commit`` advances the prefix once every
    block of the step has run.
    """

    def __init__(
        self,
        start: int,
        end: int,
        batch: int,
        max_length: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        self.shape = (end - start, batch, kv_heads, max_length, head_dim)
        self.start, self.end, self.batch, self.max_length = start, end, batch, max_length
        self._dtype, self._device = dtype, device
        # Allocated by the compute thread on first use (allocate), never on the event loop.
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0
        self.key_mask: torch.Tensor | None = None  # [batch, max_length] bool, once a step brought padding

    def allocate(self) -> None:
        """Allocate the tensors if not yet done (on the compute thread: zeroing is a big write)."""
        if self.keys is None:
            self.keys = torch.zeros(self.shape, dtype=self._dtype, device=self._device)
            self.values = torch.zeros(self.shape, dtype=self._dtype, device=self._device)

    def key_mask_for(self, new_mask: torch.Tensor | None, new_tokens: int) -> torch.Tensor | None:
        """Record which of the next ``new_tokens`` are real (``new_mask``; None: all) and return
        the mask over every key of this step, or None while the session has no padding."""
        if new_mask is None and self.key_mask is None:
            return None
        if self.key_mask is None:
            self.key_mask = torch.ones(self.batch, self.max_length, dtype=torch.bool)
        end = self.length + new_tokens
        self.key_mask[:, self.length : end] = True if new_mask is None else new_mask.to(torch.bool)
        return self.key_mask[:, :end]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.allocate()
        index = layer_idx - self.start
        lo, hi = self.length, self.length + key.shape[2]
        self.keys[index, :, :, lo:hi] = key
        self.values[index, :, :, lo:hi] = value
        return self.keys[index, :, :, :hi], self.values[index, :, :, :hi]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def commit(self, new_tokens: int) -> None:
        assert self.length + new_tokens <= self.max_length, "caller checks the length first"
        self.length += new_tokens

    def rollback(self, length: int) -> None:
        """Forget everything after ``length`` tokens (used to replay or retry a step)."""
        assert 0 <= length <= self.length
        self.length = length


class BatchedCaches:
    """Several sessions' caches seen as one padded batch, for a batched decoding step.

    Each session (batch 1) gets one new token. ``update`` writes row i's new key/value into
    session i's own cache at its own length and returns keys/values [rows, heads, L, dim] with
    L = the longest length + 1: row i holds its cached tokens then its new one in columns
    0..length_i, and zeros after (masked by :func:`swarmnode.server.backend.decode_batch_mask`).
    Sessions commit their token after the step, as with a single cache.
    """

    def __init__(self, caches: list[SessionCache] | tuple[SessionCache, ...]):
        assert all(c.batch == 1 and c.keys is not None for c in caches), "allocated, batch-1 caches only"
        self.caches = caches
        self.lengths = [c.length for c in caches]
        self.width = max(self.lengths) + 1

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        rows, heads, _, dim = key.shape
        keys = key.new_zeros(rows, heads, self.width, dim)
        values = value.new_zeros(rows, heads, self.width, dim)
        for row, (cache, length) in enumerate(zip(self.caches, self.lengths, strict=True)):
            index = layer_idx - cache.start
            cache.keys[index, 0, :, length] = key[row, :, 0]
            cache.values[index, 0, :, length] = value[row, :, 0]
            keys[row, :, : length + 1] = cache.keys[index, 0, :, : length + 1]
            values[row, :, : length + 1] = cache.values[index, 0, :, : length + 1]
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths)


@dataclass
class Session:
    session_id: str
    cache: SessionCache
    cost: int  # block-tokens reserved
    exact: bool = False  # never batched with other sessions: bitwise what it computes alone
    returns: Returns = field(default_factory=Returns)  # how long it stays away between steps (admission)


class CacheManager:
    """Admits sessions while their reserved block-tokens fit the node-wide budget."""

    def __init__(
        self,
        budget_block_tokens: int,
        max_session_length: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        self.budget = budget_block_tokens
        self.max_session_length = max_session_length
        self._kv = (kv_heads, head_dim, dtype, device)
        self._sessions: dict[str, Session] = {}
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def open(self, session_id: str, start: int, end: int, batch: int, max_length: int) -> Session:
        if not 0 < max_length <= self.max_session_length:
            raise InvalidRequest(f"max_length must be in 1..{self.max_session_length}, got {max_length}")
        cost = batch * max_length * (end - start)
        with self._lock:
            if session_id in self._sessions:
                raise InvalidRequest(f"session {session_id} is already open on this node")
            if cost > self.budget:  # never fits here, whatever ends: not a matter of waiting
                raise CacheExhausted(
                    f"session needs {cost} block-tokens, above this node's whole KV budget of {self.budget}"
                )
            if self._used + cost > self.budget:
                raise CacheExhausted(
                    f"KV cache full: session needs {cost} block-tokens, {self.budget - self._used} left",
                    retry_after=5.0,  # room comes back as sessions end: a few dozen tokens of theirs
                )
            self._used += cost
        kv_heads, head_dim, dtype, device = self._kv
        cache = SessionCache(start, end, batch, max_length, kv_heads, head_dim, dtype, device)
        session = Session(session_id, cache, cost)
        with self._lock:
            self._sessions[session_id] = session
        return session

    def open_caches(self) -> list[SessionCache]:
        """The caches of the sessions open now (a copy)."""
        with self._lock:
            return [session.cache for session in self._sessions.values()]

    def away_s(self, now: float) -> tuple[float | None, ...]:
        """Each open session's time away between its steps, as of ``now`` (None: not measured yet)."""
        with self._lock:
            return tuple(session.returns.away_s(now) for session in self._sessions.values())

    def reserved(self, session_id: str) -> int:
        """Block-tokens reserved by an open session (0 if it is not open)."""
        session = self._sessions.get(session_id)
        return session.cost if session is not None else 0

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(f"no session {session_id!r} on this node")
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is not None:
                self._used -= session.cost
