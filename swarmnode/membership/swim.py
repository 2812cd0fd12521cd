"""SWIM-style membership state: pure, clock-injected, tested without sockets.

Each member has a status (ALIVE, SUSPECT, DEAD) and an incarnation number that only its
owner raises. Updates travel piggybacked on pings and obey SWIM's precedence rules:

- ALIVE(i) overrides ALIVE/SUSPECT/DEAD(j) when i > j (a refutation, or a rejoin);
- SUSPECT(i) overrides ALIVE(j) when i >= j and SUSPECT/DEAD(j) when i > j;
- DEAD(i) overrides ALIVE/SUSPECT(j) when i >= j and DEAD(j) when i > j.

A member hearing that it is suspected (or declared dead) at its current incarnation
refutes by raising its incarnation and spreading ALIVE. Every member times suspicions
out on its own clock, so a suspicion that has spread turns into DEAD everywhere at
about the same moment. Each applied update is retransmitted a bounded number of times
(``retransmit_mult × ⌈log2(n + 1)⌉``), freshest first.

Peers are strangers, so what a message says is checked against who sent it
(:meth:`Membership.receive`; the sender is the authenticated peer id of the connection):

- only members speak: a message from a peer that is not a member changes nothing;
- a member speaks for itself only as ALIVE (its own incarnation);
- SUSPECT/DEAD about a member must name an incarnation that member really had (at most
  the one we know): nobody can suspect a future life, so no forged incarnation can force a
  refutation past it; about an unknown peer they are ignored;
- every incarnation is an integer in ``[0, now_ms + MAX_SKEW_MS]`` (incarnations are start
  times in ms, and a refutation moves to ``max(incarnation + 1, now_ms)``), so nothing a peer
  sends can push a number toward an overflow;
- DEAD members are pruned after ``dead_retention`` seconds.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarmnode.records import MAX_CLOCK_SKEW_S, MAX_INCARNATION

MAX_SKEW_MS = int(MAX_CLOCK_SKEW_S * 1000)  # how far ahead of our clock a peer's incarnation may be


class Status(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@dataclass(frozen=True)
class Update:
    """What one member says about another (or itself)."""

    peer_id: str
    status: Status
    incarnation: int

    def to_wire(self) -> list:
        return [self.peer_id, int(self.status), int(self.incarnation)]

    @classmethod
    def from_wire(cls, raw) -> Update | None:
        try:
            peer_id, status, incarnation = raw
            if not isinstance(peer_id, str) or not peer_id or isinstance(incarnation, bool):
                return None
            return cls(peer_id, Status(int(status)), int(incarnation))
        except (TypeError, ValueError):
            return None


@dataclass
class Member:
    status: Status
    incarnation: int
    since: float  # when the status last changed (our clock)


def wall_ms() -> int:
    return int(time.time() * 1000)


def sane_incarnation(incarnation: int, now_ms: int) -> bool:
    """An incarnation a live peer can have: not negative, not beyond our clock plus skew."""
    return 0 <= incarnation <= min(MAX_INCARNATION, now_ms + MAX_SKEW_MS)


def overrides(update: Update, current: Member | None) -> bool:
    """SWIM precedence: does ``update`` replace what we hold?"""
    if current is None:
        return True
    i, j = update.incarnation, current.incarnation
    if update.status == Status.ALIVE:
        return i > j
    if update.status == Status.SUSPECT:
        return i >= j if current.status == Status.ALIVE else i > j
    return i >= j if current.status != Status.DEAD else i > j


class Membership:
    """One member's view of the group (see module docstring)."""

    def __init__(
        self,
        self_id: str,
        incarnation: int,
        suspicion_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        retransmit_mult: int = 3,
        now_ms: Callable[[], int] = wall_ms,
        dead_retention: float = 60.0,
    ):
        self.self_id, self.incarnation = self_id, incarnation
        self.suspicion_timeout, self.clock, self.retransmit_mult = suspicion_timeout, clock, retransmit_mult
        self.now_ms, self.dead_retention = now_ms, dead_retention
        self.members: dict[str, Member] = {}
        self._pending: dict[str, tuple[Update, int]] = {}  # peer → (latest update, transmissions left)
        self._order: list[str] = []
        self._enqueue(Update(self_id, Status.ALIVE, incarnation))

    # ---- applying what we learn ------------------------------------------------------------------
    def receive(self, sender: str, incarnation: int | None, updates: list[Update]) -> list[Update]:
        """Apply what ``sender`` (the authenticated peer id of the connection) told us: its own
        incarnation and the updates it carried. Returns the updates that changed our view;
        anything the sender has no standing to say is dropped (see the module docstring)."""
        sender_member = self.members.get(sender)
        if sender_member is None or sender == self.self_id:
            return []  # only members speak; members come from the DHT records (add_seed)
        now = self.now_ms()
        applied = []
        if isinstance(incarnation, int) and sane_incarnation(incarnation, now):
            own = Update(sender, Status.ALIVE, incarnation)
            if self.apply(own):
                applied.append(own)
        for update in updates:
            if self._admissible(sender, update, now) and self.apply(update):
                applied.append(update)
        return applied

    def _admissible(self, sender: str, update: Update, now: int) -> bool:
        if not sane_incarnation(update.incarnation, now):
            return False
        if update.peer_id == sender:
            return update.status == Status.ALIVE  # a member speaks for itself only as alive
        if update.peer_id == self.self_id:
            # Suspected at an incarnation we never had: forged. Refute only our real lives.
            return update.status == Status.ALIVE or update.incarnation <= self.incarnation
        known = self.members.get(update.peer_id)
        if known is None:
            return False  # third parties do not introduce members
        return update.status == Status.ALIVE or update.incarnation <= known.incarnation

    def apply(self, update: Update) -> bool:
        """Apply an update (ours or an admissible one heard); True when it changed our view."""
        if update.peer_id == self.self_id:
            if update.status != Status.ALIVE and update.incarnation >= self.incarnation:
                self.incarnation = max(update.incarnation + 1, self.now_ms())  # refute: we are alive
                self._enqueue(Update(self.self_id, Status.ALIVE, self.incarnation))
                return True
            return False
        current = self.members.get(update.peer_id)
        if not overrides(update, current):
            return False
        self.members[update.peer_id] = Member(update.status, update.incarnation, self.clock())
        self._enqueue(update)
        return True

    def add_seed(self, peer_id: str, incarnation: int = 0) -> bool:
        """A peer seen in the DHT records: known from now on, alive unless we know better."""
        if peer_id == self.self_id or not sane_incarnation(incarnation, self.now_ms()):
            return False
        current = self.members.get(peer_id)
        if current is not None and current.incarnation >= incarnation:
            return False
        return self.apply(Update(peer_id, Status.ALIVE, incarnation))

    def forget(self, peer_id: str) -> None:
        """A member that left gracefully (announced OFFLINE): drop it without a verdict."""
        self.members.pop(peer_id, None)
        self._pending.pop(peer_id, None)

    def suspect(self, peer_id: str) -> bool:
        """Our own probe of ``peer_id`` failed."""
        member = self.members.get(peer_id)
        if member is None or member.status != Status.ALIVE:
            return False
        return self.apply(Update(peer_id, Status.SUSPECT, member.incarnation))

    def tick(self) -> list[Update]:
        """Turn expired suspicions into DEAD and prune old DEAD members; returns the new verdicts."""
        now = self.clock()
        verdicts = []
        for peer_id, member in list(self.members.items()):
            if member.status == Status.SUSPECT and now - member.since >= self.suspicion_timeout:
                verdict = Update(peer_id, Status.DEAD, member.incarnation)
                self.apply(verdict)
                verdicts.append(verdict)
            elif member.status == Status.DEAD and now - member.since >= self.dead_retention:
                self.forget(peer_id)
        return verdicts

    # ---- what we tell others ---------------------------------------------------------------------
    def _enqueue(self, update: Update) -> None:
        n = len(self.members) + 1
        self._pending[update.peer_id] = (update, self.retransmit_mult * max(1, math.ceil(math.log2(n + 1))))

    def piggyback(self, limit: int = 8) -> list[Update]:
        """Updates to attach to an outgoing message: the least retransmitted first."""
        chosen = sorted(self._pending.items(), key=lambda kv: -kv[1][1])[:limit]
        for peer_id, (update, left) in chosen:
            if left <= 1:
                del self._pending[peer_id]
            else:
                self._pending[peer_id] = (update, left - 1)
        return [update for _, (update, _) in chosen]

    # ---- whom to probe ---------------------------------------------------------------------------
    def next_target(self, rng: random.Random) -> str | None:
        """Round-robin over a shuffled list of live members (SWIM's bounded detection time)."""
        live = [p for p, m in self.members.items() if m.status != Status.DEAD]
        if not live:
            return None
        self._order = [p for p in self._order if p in live]
        if not self._order:
            self._order = live[:]
            rng.shuffle(self._order)
        return self._order.pop()

    def others(self, exclude: str, k: int, rng: random.Random) -> list[str]:
        """Up to k live members other than ``exclude``, for indirect probes."""
        live = [p for p, m in self.members.items() if m.status == Status.ALIVE and p != exclude]
        return rng.sample(live, min(k, len(live)))

    def view(self) -> dict[str, str]:
        return {peer: m.status.name for peer, m in self.members.items()}
