"""KV caches of a node's inference sessions, under one node-wide budget.

A session's cache is preallocated at open for its whole ``max_length`` (so a session
that was admitted never runs out of room mid-generation) and counted against the
node's budget in *block-tokens*: batch × max_length × blocks. Closing the session
returns its room at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from swarmnode.errors import CacheExhausted, InvalidRequest, UnknownSession


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
        shape = (end - start, batch, kv_heads, max_length, head_dim)
        self.start, self.end, self.batch, self.max_length = start, end, batch, max_length
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.key_mask: torch.Tensor | None = None  # [batch, max_length] bool, once a step brought padding

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


@dataclass
class Session:
    session_id: str
    cache: SessionCache
    cost: int  # block-tokens reserved


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
            if self._used + cost > self.budget:
                raise CacheExhausted(
                    f"KV cache full: session needs {cost} block-tokens, {self.budget - self._used} left"
                )
            self._used += cost
        kv_heads, head_dim, dtype, device = self._kv
        try:
            cache = SessionCache(start, end, batch, max_length, kv_heads, head_dim, dtype, device)
        except RuntimeError:  # allocation failed: give the reservation back
            with self._lock:
                self._used -= cost
            raise
        session = Session(session_id, cache, cost)
        with self._lock:
            self._sessions[session_id] = session
        return session

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
