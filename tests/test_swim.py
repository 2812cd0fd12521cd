"""SWIM membership rules, pure: precedence, refutation, suspicion timeouts, dissemination."""

import random

from swarmnode.membership.ratelimit import RateLimiter
from swarmnode.membership.swim import MAX_SKEW_MS, Member, Membership, Status, Update, overrides
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
    m = Membership("me", 7, suspicion_timeout=1.0, clock=Clock(), now_ms=lambda: 0)
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


NOW_MS = 1_800_000_000_000  # incarnations are start times in ms


def group(*peers: str, **kw) -> Membership:
    m = Membership("me", NOW_MS - 10, suspicion_timeout=1.0, clock=Clock(), now_ms=lambda: NOW_MS, **kw)
    for peer in peers:
        m.add_seed(peer, NOW_MS - 100)
    return m


def test_only_members_speak_and_only_for_themselves_as_alive():
    m = group("a", "b")
    assert m.receive("outsider", NOW_MS, [Update("a", Status.SUSPECT, NOW_MS - 100)]) == []
    assert m.view() == {"a": "ALIVE", "b": "ALIVE"} and "outsider" not in m.members
    assert m.receive("a", NOW_MS - 100, [Update("a", Status.DEAD, NOW_MS - 100)]) == []  # nobody kills itself
    assert m.receive("a", NOW_MS - 50, []) == [Update("a", Status.ALIVE, NOW_MS - 50)]  # a restart, said by itself
    assert m.receive("a", None, [Update("stranger", Status.ALIVE, NOW_MS)]) == []  # no introductions


def test_nobody_can_suspect_a_future_incarnation_or_push_one_toward_overflow():
    m = group("a", "b")
    huge = (1 << 64) - 1
    for forged in (Update("me", Status.SUSPECT, huge), Update("me", Status.DEAD, NOW_MS + 1),
                   Update("b", Status.SUSPECT, NOW_MS), Update("b", Status.DEAD, huge),
                   Update("b", Status.ALIVE, NOW_MS + MAX_SKEW_MS + 1), Update("b", Status.SUSPECT, -1)):  # fmt: skip
        assert m.receive("a", None, [forged]) == [], forged
    assert m.incarnation == NOW_MS - 10 and m.view() == {"a": "ALIVE", "b": "ALIVE"}
    assert not m.add_seed("c", huge)  # a record's incarnation is bounded too
    # a suspicion of a life that really exists is SWIM as usual: refuted by moving to now
    assert m.receive("a", None, [Update("me", Status.SUSPECT, NOW_MS - 10)]) == [Update("me", Status.SUSPECT,
                                                                                          NOW_MS - 10)]  # fmt: skip
    assert m.incarnation == NOW_MS
    assert m.receive("a", None, [Update("b", Status.SUSPECT, NOW_MS - 100)]) and m.view()["b"] == "SUSPECT"


def test_dead_members_are_pruned_after_the_retention_time():
    clock = Clock()
    m = Membership("me", 1, suspicion_timeout=1.0, clock=clock, now_ms=lambda: 100, dead_retention=5.0)
    m.add_seed("a", 3)
    m.apply(Update("a", Status.DEAD, 3))
    clock.now = 4.9
    m.tick()
    assert "a" in m.members
    clock.now = 5.0
    m.tick()
    assert "a" not in m.members


def test_rate_limiter_allows_bursts_then_the_rate_and_forgets_old_peers():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock, max_peers=2)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.allow("b")
    limiter.allow("c")  # "a" is the least recently used of three: dropped
    assert len(limiter._buckets) == 2 and "a" not in limiter._buckets
