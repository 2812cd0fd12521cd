"""The ant-colony selector's rules, pure (no sockets)."""

import dataclasses
import math
import random

import pytest

from swarmnode.errors import NoServersForBlocks
from swarmnode.records import NodeRecord, NodeState, SwarmSnapshot
from swarmnode.routing import AcoParams, AntColonyRouter, Hop, RandomRouter, make_router, shortest_chain
from tests.clock import Clock


def node(peer, start, end, rps=100.0, sessions=0, busy=-1.0, slowdown=-1.0):
    return NodeRecord(
        peer, NodeState.ONLINE, start, end, inference_rps=rps, active_sessions=sessions, busy=busy, slowdown=slowdown
    )


def snap(*records, shared=None):
    return SwarmSnapshot("m", 8, {r.peer_id: r for r in records}, shared=shared or {})


def chain_cost(router, snapshot, chain):
    return sum(router.hop_cost(snapshot.nodes[h.peer_id], h.start, h.end) for h in chain)


def test_constant_tau_and_pure_exploitation_is_shortest_latency_routing():
    rng = random.Random(5)
    for _ in range(30):
        records = []
        for i in range(rng.randint(3, 9)):
            start = rng.randrange(0, 7)
            records.append(node(f"n{i}", start, rng.randint(start + 1, 8), rps=rng.uniform(5, 500)))
        records += [node("full", 0, 8, rps=rng.uniform(5, 50))]  # always a chain
        s = snap(*records)
        router = AntColonyRouter(AcoParams(), use_load=False, hop_overhead_s=1e-3)
        ours = router.choose_chain(s, 0, 8, greedy=True)
        reference = shortest_chain(s, 0, 8, hop_overhead_s=1e-3)
        assert math.isclose(chain_cost(router, s, ours), chain_cost(router, s, reference), rel_tol=1e-9)


def test_choice_probabilities_follow_tau_alpha_eta_beta():
    clock = Clock(1000.0)
    router = AntColonyRouter(AcoParams(q0=0.0), rng=random.Random(1), clock=clock, use_load=False)
    s = snap(node("a", 0, 8, rps=100), node("b", 0, 8, rps=100))  # equal η: τ decides
    router._set_tau(0, "a", 0.8)
    router._set_tau(0, "b", 0.2)
    picks = [router.choose_chain(s, 0, 8)[0].peer_id for _ in range(4000)]
    assert abs(picks.count("a") / len(picks) - 0.8) < 0.03  # 0.8^1 / (0.8 + 0.2)


def share_of_fast(s, **params) -> float:
    router = AntColonyRouter(AcoParams(beta=2.0, **params), rng=random.Random(2))
    picks = [router.choose_chain(s, 0, 8)[0].peer_id for _ in range(4000)]
    return picks.count("fast") / len(picks)


def test_best_of_two_prefers_but_does_not_herd_onto_a_loaded_node():
    s = snap(node("fast", 0, 8, rps=200, slowdown=2.0), node("slow", 0, 8, rps=100, slowdown=2.0))
    single, best_of_two = share_of_fast(s, q0=0.0), share_of_fast(s, q0=1.0)
    assert 0.6 < single < best_of_two < 0.97  # prefers the fast node, yet never herds onto it
    assert share_of_fast(s, q0=1.0, herd_load=2.0) == 1.0  # within herd_load: loaded is not loaded enough


def test_exploiting_takes_the_best_outright_while_its_node_is_not_loaded():
    idle = snap(node("fast", 0, 8, rps=200, slowdown=1.1), node("slow", 0, 8, rps=100))
    assert share_of_fast(idle, q0=1.0) == 1.0  # clients piling onto a node whose steps do not wait
    assert share_of_fast(idle, q0=1.0, herd_load=0.0) < 0.97  # herding off: best of two, as when loaded
    assert 0.6 < share_of_fast(idle, q0=0.0) < 0.97  # exploring draws stay proportional


def test_load_term_steers_away_from_busy_nodes():
    router = AntColonyRouter(AcoParams(load_penalty=0.5))
    s = snap(node("busy", 0, 8, rps=100, sessions=6), node("idle", 0, 8, rps=100))
    assert router.choose_chain(s, 0, 8, greedy=True)[0].peer_id == "idle"
    assert AntColonyRouter(use_load=False).hop_cost(s.nodes["busy"], 0, 8) == pytest.approx(1e-3 + 8 / 100)


def test_load_follows_the_busy_fraction_freshest_source_first():
    clock = Clock(1000.0)
    router = AntColonyRouter(AcoParams(busy_cap=0.9, busy_max_age_s=15), clock=clock, publisher_id="me")
    record = node("x", 0, 8, sessions=6, busy=0.5)  # the record's busy fraction beats its session count
    assert router.load(record) == pytest.approx(2.0)
    router.absorb_shared({"a": {"x": {"busy": 0.2}}, "b": {"x": {"busy": 0.25}}, "liar": {"x": {"busy": 1.0}}})
    assert router.load(record) == pytest.approx(1 / 0.75)  # other clients' fresh reports: the median
    router.absorb_shared({"junk": {"x": {"busy": float("nan")}}, "bad": {"x": {"busy": 7}}, "me": {"x": {"busy": 0}}})
    assert router.load(record) == pytest.approx(2.0)  # nothing usable shared: back to the record
    router.report_step(Hop("x", 0, 8), 0.1, 1, compute_seconds=0.08, busy=0.99)
    assert router.load(record) == pytest.approx(10.0)  # what the node told us; capped at 1 / (1 - 0.9)
    assert router.observations()["x"]["busy"] == 0.99  # shared while fresh
    clock.now += 16
    assert router.load(record) == pytest.approx(2.0) and "busy" not in router.observations().get("x", {})
    router.report_step(Hop("x", 0, 8), 0.1, 1, busy="idle")  # remote nonsense is ignored
    assert router.estimates["x"].busy == 0.99
    unknown = node("y", 0, 8, sessions=2)  # an older node: no busy fraction anywhere
    assert router.load(unknown) == pytest.approx(1 + AcoParams().load_penalty * 2)
    frozen = AntColonyRouter(use_busy=False)  # the "shortest_load" policy: session counts only
    assert frozen.load(record) == pytest.approx(1 + AcoParams().load_penalty * 6)
    assert make_router("shortest_load").use_busy is False and make_router("aco").use_busy is True


def test_load_prefers_the_measured_slowdown_to_the_busy_fraction():
    """A node that batches is busy all the time yet its steps barely wait: the slowdown it
    measured (time in node over compute) prices it, not 1 / (1 - busy)."""
    clock = Clock(1000.0)
    router = AntColonyRouter(AcoParams(busy_cap=0.9, busy_max_age_s=15), clock=clock, publisher_id="me")
    record = node("x", 0, 8, busy=0.95)
    assert router.load(record) == pytest.approx(10.0)  # the busy fraction alone: capped at 1 / (1 - 0.9)
    assert router.load(dataclasses.replace(record, slowdown=1.4)) == pytest.approx(1.4)  # the record's slowdown
    router.absorb_shared({"a": {"x": {"slowdown": 1.2}}, "b": {"x": {"slowdown": 1.3}}, "c": {"x": {"slowdown": 50}}})
    assert router.load(record) == pytest.approx(1.3)  # other clients' fresh reports: the median
    router.report_step(Hop("x", 0, 8), 0.1, 1, compute_seconds=0.08, busy=0.99, slowdown=1.1)
    assert router.load(record) == pytest.approx(1.1)  # what the node told us in a step
    assert router.observations()["x"]["slowdown"] == 1.1  # shared while fresh
    router.report_step(Hop("x", 0, 8), 0.1, 1, slowdown=40.0)  # a queue 40x its compute: capped like busy
    assert router.load(record) == pytest.approx(10.0)
    for nonsense in ("fast", 0.2, float("nan"), True, 1e9):  # remote input: ignored
        router.report_step(Hop("x", 0, 8), 0.1, 1, slowdown=nonsense)
    assert router.estimates["x"].slowdown == 40.0
    clock.now += 16  # stale: back to what others said
    assert router.load(record) == pytest.approx(1.3) and "slowdown" not in router.observations().get("x", {})
    frozen = AntColonyRouter(use_busy=False)  # the "shortest_load" policy: session counts only
    assert frozen.load(dataclasses.replace(record, slowdown=3.0, active_sessions=2)) == pytest.approx(2.0)


def test_reinforcement_is_relative_to_the_best_recent_time():
    router = AntColonyRouter(AcoParams(reinforce_every=4, deposit=0.5), clock=Clock(1000.0))
    fast, slow = Hop("fast", 0, 4), Hop("slow", 0, 4)
    for _ in range(4):
        router.report_step(fast, 0.004, 1)
        router.report_step(slow, 0.016, 1)
    assert router.tau(0, "fast") == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert router.tau(0, "slow") == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)
    assert router.boundary_stats(0)["best"] == pytest.approx(0.001)


def test_evaporation_returns_to_tau0_over_wall_time():
    clock = Clock(1000.0)
    router = AntColonyRouter(AcoParams(half_life_s=10), clock=clock)
    router._set_tau(0, "x", 1.0)
    clock.now += 10
    assert router.tau(0, "x") == pytest.approx(0.75)
    clock.now += 1000
    assert router.tau(0, "x") == pytest.approx(0.5, abs=1e-6)


def test_tau_stays_within_bounds():
    router = AntColonyRouter(AcoParams(tau_min=0.1, tau_max=0.9), clock=Clock(1000.0))
    router._set_tau(0, "x", 5.0)
    router._set_tau(1, "x", -3.0)
    assert router.tau(0, "x") == pytest.approx(0.9) and router.tau(1, "x") == pytest.approx(0.1)


def test_failure_drops_tau_bans_with_backoff_and_plans_backups():
    clock = Clock(1000.0)
    router = AntColonyRouter(AcoParams(), clock=clock)
    s = snap(node("a", 0, 4, rps=1000), node("b", 4, 8, rps=1000), node("b2", 4, 8, rps=100), node("c", 0, 8))
    chain = router.choose_chain(s, 0, 8, greedy=True)
    assert [h.peer_id for h in chain] == ["a", "b"]
    assert router.backup(chain[1]) == [Hop("b2", 4, 8)]
    router.report_failure(chain[1], RuntimeError("gone"))
    assert router.tau(4, "b") == pytest.approx(AcoParams().tau_min)
    assert "b" in router.bans.banned()
    assert all(h.peer_id != "b" for h in router.choose_chain(s, 0, 8, greedy=True))
    clock.now += 2.5  # first ban: 2 s
    assert "b" not in router.bans.banned()
    router.report_failure(chain[1], RuntimeError("again"))
    clock.now += 2.5
    assert "b" in router.bans.banned()  # second ban: 4 s


def test_shared_observations_are_aggregated_robustly():
    router = AntColonyRouter()
    record = node("x", 0, 8, rps=100)  # advertised 10 ms per block
    honest = {"per_block_s": 0.02, "delay_s": 0.001, "samples": 5, "failures": 0}
    shared = {f"client{i}": {"x": honest} for i in range(4)}
    shared["liar"] = {"x": {"per_block_s": 1e6, "delay_s": 1e6, "samples": 10**9, "failures": 0}}
    router.absorb_shared(shared)
    assert router.per_block_s(record) == pytest.approx(0.02)  # the median ignores the absurd publisher
    router.absorb_shared({"liar": {"x": {"per_block_s": 1e6}}, "junk": {"x": {"per_block_s": "fast"}}})
    router.estimates["x"].per_block_s, router.estimates["x"].samples = 0.01, 50
    router.absorb_shared({"liar": {"x": {"per_block_s": 1e6}}})
    assert router.per_block_s(record) < 0.01 * 2  # clamped, and weighed against our own 50 samples


def test_open_sessions_are_counted_shared_and_capped():
    router = AntColonyRouter(AcoParams(load_penalty=1.0, shared_sessions_cap=4), publisher_id="me")
    busy, idle = node("busy", 0, 8, sessions=0), node("idle", 0, 8, sessions=0)
    first, second = [Hop("busy", 0, 8)], [Hop("busy", 0, 4), Hop("idle", 4, 8)]
    router.hold(first)
    router.hold(second)
    assert router.sessions_on(busy) == 2 and router.load(busy) == pytest.approx(3.0)
    assert router.observations()["busy"]["sessions"] == 2  # shared even before any measurement
    router.release(second)
    assert router.held == {"busy": 1}
    router.release(first)
    assert router.sessions_on(busy) == 0 and "busy" not in router.observations()
    # other clients' counts add up, each publisher capped; our own publication is not counted twice
    published = {
        "a": {"busy": {"sessions": 2}},
        "b": {"busy": {"sessions": 3}},
        "liar": {"busy": {"sessions": 10**9}, "idle": {"sessions": float("nan")}},
        "junk": {"idle": {"sessions": "many"}, "busy": "not a dict"},
        "me": {"busy": {"sessions": 50}},
    }
    assert router.choose_chain(snap(busy, idle, shared=published), 0, 8, greedy=True) == [Hop("idle", 0, 8)]
    assert router.sessions_on(busy) == 2 + 3 + 4 and router.sessions_on(idle) == 0
    assert router.sessions_on(node("busy", 0, 8, sessions=20)) == 20  # a record that says more wins
    router.choose_chain(snap(busy, idle), 0, 8)  # a newer read without publications forgets them
    assert router.load(busy) == router.load(idle) == 1.0


def test_no_servers_and_random_policy():
    with pytest.raises(NoServersForBlocks) as info:
        AntColonyRouter().choose_chain(snap(node("a", 0, 3)), 0, 8)
    assert info.value.blocks == [3, 4, 5, 6, 7]
    chain = RandomRouter(random.Random(0)).choose_chain(snap(node("a", 0, 5), node("b", 3, 8)), 0, 8)
    assert chain[0] == Hop("a", 0, 5) and chain[-1].end == 8


def test_prompt_steps_do_not_feed_the_ants():
    router = AntColonyRouter(AcoParams(reinforce_every=2), clock=Clock(1000.0))
    hop = Hop("x", 0, 4)
    router.report_step(hop, 0.010, 64, compute_seconds=0.008)  # a 64-token prompt: not a decoding step
    assert "x" not in router.estimates and router.boundary_stats(0) == {}
    router.report_step(hop, 0.010, 1, compute_seconds=0.008)
    router.report_step(hop, 0.010, 1, compute_seconds=0.008)
    assert router.estimates["x"].per_block_s == pytest.approx(0.002)
    assert router.estimates["x"].delay_s == pytest.approx(0.002)


def test_a_nodes_queueing_is_priced_once_by_load_not_again_as_distance():
    """Where the node reports its own time per step, a hop's distance is the round trip
    minus that time: the wait behind other sessions is in its load already."""
    router = AntColonyRouter(AcoParams(reinforce_every=2), clock=Clock(1000.0), pings={"x": 0.002})
    hop = Hop("x", 0, 4)
    for _ in range(2):  # 8 ms compute, 12 ms waiting for the batch in progress, 3 ms outside the node
        router.report_step(hop, 0.023, 1, compute_seconds=0.008, slowdown=2.5, node_seconds=0.020)
    assert router.estimates["x"].delay_s == pytest.approx(0.003)
    assert router.hop_cost(node("x", 0, 4), 0, 4) == pytest.approx(0.003 + 0.008 * 2.5)
    liar = AntColonyRouter(AcoParams(reinforce_every=1), clock=Clock(1000.0), pings={"x": 0.002})
    liar.report_step(hop, 0.023, 1, compute_seconds=0.008, node_seconds=0.023)  # "all of it was in me"
    assert liar.estimates["x"].delay_s == pytest.approx(0.002)  # never nearer than our ping of it
    old = AntColonyRouter(AcoParams(reinforce_every=1), clock=Clock(1000.0))
    old.report_step(hop, 0.023, 1, compute_seconds=0.008, node_seconds="soon")  # remote nonsense: as unreported
    assert old.estimates["x"].delay_s == pytest.approx(0.015)


def test_an_untried_node_costs_its_ping_plus_what_hops_cost_us_beyond_their_pings():
    """On a loaded client host every hop costs more than its ping; an unmeasured node (or a
    chain of more hops) must not look cheaper than the hops we have measured for that."""
    pings = {"a": 0.002, "b": 0.004, "c": 0.010, "new": 0.002}
    router = AntColonyRouter(AcoParams(reinforce_every=1), clock=Clock(1000.0), pings=pings)
    assert router.delay_s(node("new", 0, 8)) == pytest.approx(0.002)  # nothing measured yet
    for peer, beyond in (("a", 0.010), ("b", 0.020), ("c", 0.030)):
        rtt = pings[peer] + beyond + 0.008
        router.report_step(Hop(peer, 0, 8), rtt, 1, compute_seconds=0.008, node_seconds=0.008)
    assert router.overhead_beyond_ping_s() == pytest.approx(0.020)  # the median
    assert router.delay_s(node("new", 0, 8)) == pytest.approx(0.022)
    assert router.delay_s(node("a", 0, 8)) == pytest.approx(0.012)  # measured: its own figure
    two_hops = router.choose_chain(snap(node("a", 0, 8, rps=90), node("p", 0, 4), node("q", 4, 8)), 0, 8, greedy=True)
    assert two_hops == [Hop("a", 0, 8)]


def test_the_frozen_variant_does_not_learn():
    router = AntColonyRouter(AcoParams(reinforce_every=1), learn=False, clock=Clock(1000.0))
    router.report_step(Hop("x", 0, 4), 1.0, 1, compute_seconds=0.9)
    assert "x" not in router.estimates and router.tau(0, "x") == pytest.approx(AcoParams().tau0)


def _traffic_with_a_liar(params: AcoParams, rounds: int = 600) -> dict[str, int]:
    """Two replicas of the same speed: each step of a hop takes ping + service × (1 + the other
    sessions on that node). ``honest`` reports its compute time and busy fraction truthfully;
    ``liar`` reports ~0 compute and busy 0 whatever the truth. Sessions of 32 tokens arrive
    every 4 rounds. Returns the tokens each node served."""
    clock, ping, service = Clock(1000.0), 0.002, 0.04
    router = AntColonyRouter(params, rng=random.Random(7), clock=clock, pings={"honest": ping, "liar": ping})
    s = snap(node("honest", 0, 8, rps=200), node("liar", 0, 8, rps=200))
    sessions: list[list] = []  # [hop, tokens left]
    served = {"honest": 0, "liar": 0}
    for round_ in range(rounds):
        if round_ % 4 == 0:
            hop = router.choose_chain(s, 0, 8)[0]
            router.hold([hop])
            sessions.append([hop, 32])
        on = {p: sum(1 for h, _ in sessions if h.peer_id == p) for p in served}
        for entry in sessions:
            hop = entry[0]
            busy = 1 - 1 / on[hop.peer_id]  # the others' share of its time
            seconds = ping + service * on[hop.peer_id]
            claims = (service, busy) if hop.peer_id == "honest" else (1e-5, 0.0)
            router.report_step(hop, seconds, 1, compute_seconds=claims[0], busy=claims[1])
            served[hop.peer_id] += 1
            entry[1] -= 1
        for done in [e for e in sessions if e[1] == 0]:
            router.release([done[0]])
            sessions.remove(done)
        clock.now += 0.05
    return served


def test_a_node_lying_about_busy_and_compute_gains_no_traffic():
    """The router trusts what it measured over what a node claims: a node whose reports understate
    the in-node time we saw (round trip minus our own ping) is routed on measurements alone, as
    if saturated. Without that check (claim_ratio huge) the same liar takes most of the traffic."""
    checked = _traffic_with_a_liar(AcoParams())
    unchecked = _traffic_with_a_liar(AcoParams(claim_ratio=1e9))
    assert checked["liar"] <= checked["honest"], checked
    assert unchecked["liar"] > 1.3 * unchecked["honest"], unchecked  # what the check prevents


def test_claims_are_checked_only_against_a_ping_and_honest_reports_pass():
    clock = Clock(0.0)
    router = AntColonyRouter(AcoParams(reinforce_every=1), clock=clock)
    liar, honest = Hop("l", 0, 8), Hop("h", 0, 8)
    for _ in range(5):  # no ping of "l": network and node time cannot be told apart, nothing is judged
        router.report_step(liar, 0.2, 1, compute_seconds=1e-5, busy=0.0)
    assert router.trusts_claims("l")
    router.pings.update(l=0.01, h=0.01)
    for _ in range(3):
        router.report_step(liar, 0.2, 1, compute_seconds=1e-5, busy=0.0)
        router.report_step(honest, 0.2, 1, compute_seconds=0.05, busy=0.75)  # 0.05 / 0.25 = 0.2: consistent
    assert not router.trusts_claims("l") and router.trusts_claims("h")
    assert router.estimates["l"].misreports == 1
    record = node("l", 0, 8)
    assert router.load(record) == AcoParams().distrust_load  # as if saturated
    assert router.per_block_s(record) == pytest.approx((0.2 - 0.01) / 8, rel=0.01)  # measured, not claimed
    assert router.observations()["l"]["per_block_s"] == pytest.approx((0.2 - 0.01) / 8, rel=0.01)
    clock.now += AcoParams().distrust_s
    assert router.trusts_claims("l")  # distrust lapses: a node that was merely overloaded gets back in


def test_a_slowdown_that_hides_a_queue_is_caught():
    """The slowdown is the load routers price a node by, so it is the claim that is checked: a
    node that reports its compute truthfully and a busy fraction near 1 (a lenient queueing model)
    but a slowdown of 1 while its steps wait 10x their compute is contradicted; an honest one
    with the same queue and a true slowdown is not."""
    router = AntColonyRouter(AcoParams(reinforce_every=1), clock=Clock(0.0))
    router.pings.update(liar=0.01, honest=0.01)
    for _ in range(3):
        for peer, slowdown in (("liar", 1.0), ("honest", 10.0)):  # in node: 20 ms compute + 180 ms waiting
            router.report_step(Hop(peer, 0, 8), 0.01 + 0.2, 1, compute_seconds=0.02, busy=0.99, slowdown=slowdown)
    assert not router.trusts_claims("liar") and router.trusts_claims("honest")
    assert router.load(node("liar", 0, 8)) == AcoParams().distrust_load


def test_time_that_no_node_explains_is_not_held_against_one():
    """On a starved host every node's steps take longer than their claims imply: nobody is
    contradicted for that, while a node whose gap stands out still is."""
    router = AntColonyRouter(AcoParams(reinforce_every=1), clock=Clock(0.0))
    router.pings.update(a=0.01, b=0.01, c=0.01, liar=0.01)
    for _ in range(4):
        for peer in "abc":  # claims imply 20 ms; we see 20 ms + 80 ms of host lag
            router.report_step(Hop(peer, 0, 8), 0.01 + 0.02 + 0.08, 1, compute_seconds=0.02, busy=0.0)
        router.report_step(Hop("liar", 0, 8), 0.01 + 0.4, 1, compute_seconds=1e-5, busy=0.0)
    assert all(router.trusts_claims(peer) for peer in "abc")
    assert not router.trusts_claims("liar")
