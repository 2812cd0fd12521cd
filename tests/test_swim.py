"""SWIM membership rules, pure: precedence, refutation, suspicion timeouts, dissemination."""

import random

from swarmnode.membership.swim import Member, Membership, Status, Update, overrides
from tests.clock import Clock


def test_precedence_rules():
    alive, suspect, dead = Status.ALIVE, Status.SUSPECT, Status.DEAD
    held = Member(alive, 5, 0)
    assert overrides(Update("p", suspect, 5), held)  # suspicion at the same incarnation
    assert not overrides(Update("p", alive, 5), held)
    assert overrides(Update("p", alive, 6), Member(suspect, 5, 0))  # refutation
    assert not overrides(Update("p", suspect, 5), Member(suspect, 5, 0))
    assert overrides(Update("p", dead, 5), Member(suspect, 5, 0))
    assert not overrides(Update("p", alive, 5), Member(dead, 5, 0))
    assert overrides(Update("p", alive, 9), Member(dead, 5, 0))  # rejoined with a new incarnation
    assert not overrides(Update("p", dead, 4), Member(alive, 5, 0))  # stale verdict


def test_suspicion_times_out_into_a_verdict():
    clock = Clock()
    m = Membership("me", 1, suspicion_timeout=2.0, clock=clock)
    m.add_seed("a", 3)
    assert m.suspect("a") and m.view() == {"a": "SUSPECT"}
    clock.now = 1.9
    assert m.tick() == []
    clock.now = 2.0
    assert m.tick() == [Update("a", Status.DEAD, 3)]
    assert m.view() == {"a": "DEAD"}
    assert not m.add_seed("a", 3)  # the DHT record of the same life does not revive it
    assert m.add_seed("a", 4) and m.view() == {"a": "ALIVE"}  # a restart does


def test_a_suspected_member_refutes_with_a_higher_incarnation():
    m = Membership("me", 7, suspicion_timeout=1.0, clock=Clock())
    assert m.apply(Update("me", Status.SUSPECT, 7))
    assert m.incarnation == 8
    assert Update("me", Status.ALIVE, 8) in m.piggyback()
    assert not m.apply(Update("me", Status.SUSPECT, 7))  # old news


def test_updates_are_retransmitted_a_bounded_number_of_times():
    m = Membership("me", 1, suspicion_timeout=1.0, clock=Clock(), retransmit_mult=2)
    for peer in "abc":
        m.add_seed(peer)
    sent = []
    for _ in range(50):
        sent.extend(u.peer_id for u in m.piggyback(limit=2))
    assert set(sent) == {"me", "a", "b", "c"}
    assert len(sent) <= 4 * 2 * 3  # mult × ⌈log2(n+1)⌉ each
    assert m.piggyback() == []


def test_round_robin_probes_every_live_member():
    m = Membership("me", 1, suspicion_timeout=1.0, clock=Clock())
    for peer in "abcd":
        m.add_seed(peer)
    m.apply(Update("d", Status.DEAD, 0))
    rng = random.Random(0)
    targets = [m.next_target(rng) for _ in range(6)]
    assert set(targets[:3]) == {"a", "b", "c"} and "d" not in targets
    assert set(m.others("a", 5, rng)) == {"b", "c"}


def test_malformed_wire_updates_are_dropped():
    assert Update.from_wire(["p", 1, 3]) == Update("p", Status.SUSPECT, 3)
    for bad in (None, ["p", 9, 1], ["", 0, 1], ["p", 0, True], "xyz", [1, 2, 3]):
        assert Update.from_wire(bad) is None
