import pytest

from swarmnode.errors import NoServersForBlocks
from swarmnode.records import NodeRecord, NodeState, SwarmSnapshot
from swarmnode.routing import Bans, Hop, ShortestPathRouter, shortest_chain


def snap(*records):
    return SwarmSnapshot("m", 8, {r.peer_id: r for r in records})


def node(peer, start, end, rps=100.0, state=NodeState.ONLINE):
    return NodeRecord(peer, state, start, end, inference_rps=rps)


def test_picks_the_faster_node_and_covers_all_blocks():
    s = snap(node("a", 0, 4), node("slow", 4, 8, rps=10), node("fast", 4, 8, rps=1000))
    assert shortest_chain(s, 0, 8) == [Hop("a", 0, 4), Hop("fast", 4, 8)]


def test_uses_sub_spans_and_fewer_hops_when_equal():
    s = snap(node("a", 0, 8), node("b", 0, 4), node("c", 4, 8))
    assert shortest_chain(s, 0, 8) == [Hop("a", 0, 8)]  # one hop beats two of equal speed
    s = snap(node("a", 0, 6), node("b", 3, 8, rps=1000))
    chain = shortest_chain(s, 0, 8)
    assert chain[0].peer_id == "a" and chain[1] == Hop("b", chain[0].end, 8) and chain[0].end == 3


def test_skips_offline_joining_and_excluded_nodes():
    s = snap(node("a", 0, 8, state=NodeState.JOINING), node("b", 0, 8, state=NodeState.DRAINING), node("c", 0, 8))
    assert shortest_chain(s, 0, 8) == [Hop("c", 0, 8)]
    with pytest.raises(NoServersForBlocks):
        shortest_chain(s, 0, 8, exclude=frozenset({"c"}))


def test_no_servers_names_the_missing_blocks():
    s = snap(node("a", 0, 3), node("b", 6, 8))
    with pytest.raises(NoServersForBlocks) as info:
        shortest_chain(s, 0, 8)
    assert info.value.blocks == [3, 4, 5]
    assert "3:6" in str(info.value)


def test_bans_back_off_exponentially_and_expire():
    now = [0.0]
    bans = Bans(base_s=2, max_s=10, clock=lambda: now[0])
    assert bans.ban("x") == 2 and bans.banned() == {"x"}
    now[0] = 2.5
    assert bans.banned() == frozenset()
    assert bans.ban("x") == 4 and bans.ban("x") == 8 and bans.ban("x") == 10  # capped
    for _ in range(2000):  # a peer that keeps failing (it once overflowed the float)
        assert bans.ban("x") == 10
    bans.clear("x")
    assert bans.banned() == frozenset()


def test_router_avoids_a_failed_node_until_its_ban_ends():
    now = [0.0]
    router = ShortestPathRouter(bans=Bans(base_s=5, clock=lambda: now[0]))
    s = snap(node("fast", 0, 8, rps=1000), node("slow", 0, 8, rps=10))
    assert router.choose_chain(s, 0, 8)[0].peer_id == "fast"
    router.report_failure(Hop("fast", 0, 8), RuntimeError("boom"))
    assert router.choose_chain(s, 0, 8)[0].peer_id == "slow"
    now[0] = 6
    assert router.choose_chain(s, 0, 8)[0].peer_id == "fast"


def test_a_failed_spot_check_is_shared_with_its_evidence_and_counted_once_per_publisher():
    from swarmnode.errors import VerificationFailed
    from swarmnode.routing.aco import AntColonyRouter
    from swarmnode.routing.stigmergy import aggregate

    router = AntColonyRouter(publisher_id="me")
    hop = Hop("liar", 0, 4)
    router.report_failure(hop, VerificationFailed("spot-check of step 4: differs by 3.2e-02", "liar"))
    router.report_failure(hop, VerificationFailed("spot-check of step 8: differs by 3.1e-02", "liar"))
    shared = router.observations()["liar"]
    assert shared["disputes"] == 2 and shared["evidence"].startswith("spot-check of step 8")
    published = {"me": {"liar": shared}, "other": {"liar": {"disputes": 99, "evidence": "x" * 10_000}},
                 "bogus": {"liar": {"disputes": "many"}}}  # fmt: skip
    view = aggregate(published, {}, skip_publisher=None, clamp=10.0, sessions_cap=8)
    assert view.disputed_by == {"liar": 2}  # one vote per publisher; nonsense ignored


def test_a_node_behind_a_relay_costs_two_legs_until_it_is_measured():
    from swarmnode.routing import AcoParams, AntColonyRouter

    records = {
        "QmDirect": NodeRecord("QmDirect", NodeState.ONLINE, 0, 4, inference_rps=100.0),
        "QmRelayed": NodeRecord("QmRelayed", NodeState.ONLINE, 0, 4, inference_rps=100.0, relay="QmRelay"),
    }
    snapshot = SwarmSnapshot("m", 4, records)
    assert [h.peer_id for h in shortest_chain(snapshot, 0, 4)] == ["QmDirect"]  # else alike: the relay's leg
    aco = AntColonyRouter(AcoParams())
    assert aco.delay_s(records["QmRelayed"]) == pytest.approx(2 * aco.delay_s(records["QmDirect"]))
    # measured round trips (pings go through the relay too) decide once they exist
    pings = {"QmDirect": 0.050, "QmRelayed": 0.004}
    assert [h.peer_id for h in shortest_chain(snapshot, 0, 4, pings=pings)] == ["QmRelayed"]
