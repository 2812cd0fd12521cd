"""The routing simulator runs the real routing code end to end (a short smoke run per scenario)."""

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "simulate_routing", Path(__file__).parents[1] / "scripts/simulate_routing.py"
)
sim = importlib.util.module_from_spec(spec)
sys.modules["simulate_routing"] = sim  # dataclasses look their module up while the file executes
spec.loader.exec_module(sim)


@pytest.mark.parametrize("scenario", sorted(sim.SCENARIOS))
def test_every_policy_completes_tokens(scenario):
    for policy in sim.POLICIES:
        result = sim.Simulation(scenario, policy, seed=1, duration=60.0 if scenario != "gray" else 75.0).run()
        assert result["tokens_per_s"] > 0 and not math.isnan(result["p95_ms"])
        assert 0 < result["jain"] <= 1


def test_common_random_numbers_give_every_policy_the_same_swarm():
    a, b = sim.Simulation("churn", "aco", seed=3), sim.Simulation("churn", "shortest", seed=3)
    assert [(x.start, x.end, x.per_block_s, x.delay_s) for x in a.nodes] == [
        (x.start, x.end, x.per_block_s, x.delay_s) for x in b.nodes
    ]
    covered = {blk for x in a.nodes for blk in range(x.start, x.end)}
    assert covered == set(range(a.num_blocks))


def test_churn_causes_failovers_that_recover():
    result = sim.Simulation("churn", "aco", seed=0, duration=60.0).run()
    assert result["failovers"] > 0 and 0 < result["recovery_s"] < 30


def test_the_routing_claims_hold_on_the_documented_seeds():
    """docs/routing.md's targets, on its 10 seeds (about 7 s): a change to the selector or its
    parameters that loses them fails here, not only in a report."""
    contention = sim.run_scenario("contention", 10, ("aco", "shortest", "shortest_load"))
    aco, shortest, shortest_load = (contention[p]["p95_ms"] for p in ("aco", "shortest", "shortest_load"))
    print(f"contention p95: aco {aco:.0f}, shortest {shortest:.0f}, shortest_load {shortest_load:.0f} ms")
    assert aco <= 0.75 * shortest
    assert aco <= 0.90 * shortest_load
    gray = sim.run_scenario("gray", 10, ("aco",))["aco"]
    assert gray["gray_share_after_30s"] < 0.10, gray


def test_the_claims_about_the_real_defaults_hold_on_the_documented_seeds():
    """docs/routing.md, "Admission control in the simulator": with nodes that batch and refuse
    sessions past their target, as ours do, aco is no worse than shortest on contended p95, its
    sessions wait less to be admitted, and it leaves a slowed node that shortest keeps."""
    contention = sim.run_scenario("contention", 10, ("aco", "shortest"), batching=True, admission=True)
    aco, shortest = contention["aco"], contention["shortest"]
    print({p: (round(m["p95_ms"]), round(m["open_wait_ms"])) for p, m in contention.items()})
    assert aco["p95_ms"] <= shortest["p95_ms"]
    assert aco["open_wait_ms"] <= 0.6 * shortest["open_wait_ms"]
    gray = sim.run_scenario("gray", 10, ("aco", "shortest"), batching=True, admission=True)
    assert gray["aco"]["gray_share_after_30s"] <= 0.25 * gray["shortest"]["gray_share_after_30s"], gray


def test_nodes_that_queue_admit_from_their_sessions_time_away_not_the_worst_case(monkeypatch):
    """server/admission.py: a first-in-first-out node projects the step a newcomer would see
    from how long its sessions stay away between steps. In `contention` (FIFO nodes, real
    rule) that serves far more tokens, with shorter waits to be admitted, than projecting
    every session's step at once, which refuses sessions while nodes are mostly idle."""
    queued = sim.run_scenario("contention", 2, ("aco",), admission=True)["aco"]
    measured = sim.Simulation._admission_of
    monkeypatch.setattr(sim.Simulation, "_admission_of", lambda self, x: replace(measured(self, x), queued=False))
    worst = sim.run_scenario("contention", 2, ("aco",), admission=True)["aco"]
    print({k: (round(queued[k], 1), round(worst[k], 1)) for k in ("tokens_per_s", "open_wait_ms", "p95_ms")})
    assert queued["tokens_per_s"] >= 1.8 * worst["tokens_per_s"]
    assert queued["open_wait_ms"] <= 0.7 * worst["open_wait_ms"]


def test_rebalancing_closes_the_gaps_departures_open():
    """Nodes leave for good; with rebalancing (the real plan_move) the others cover the gaps
    within a bounded time, no node keeps moving, and the swarm serves more than without."""
    bound = sim.DETECT_S + 1.2 * sim.ANNOUNCE_S + sim.MOVE_S + 2  # noticed, decided, loaded (+ sampling)
    on_tokens = off_tokens = on_gaps = off_gaps = 0.0
    for seed in range(5):
        on = sim.Simulation("departures", "aco", seed=seed, duration=240.0)
        off = sim.Simulation("departures", "aco", seed=seed, duration=240.0, rebalance=False)
        result_on, result_off = on.run(), off.run()
        on_tokens, off_tokens = on_tokens + result_on["tokens_per_s"], off_tokens + result_off["tokens_per_s"]
        on_gaps, off_gaps = on_gaps + result_on["gap_s"], off_gaps + result_off["gap_s"]
        for began, ended in on.gap_episodes:
            if ended is not None:
                assert ended - began <= bound, (seed, on.gap_episodes)
            elif began < on.duration - bound:  # still open: then no node can close it without opening another
                alive = [x for x in on.nodes if x.alive]
                snapshot = on._snapshot_of(on.nodes, on.now)
                for x in alive:
                    assert sim.plan_move(snapshot, x.peer_id, (x.start, x.end), x.advertised_rps) is None
        per_node: dict[str, int] = {}
        for _, peer, _, _ in on.moves:
            per_node[peer] = per_node.get(peer, 0) + 1
        assert max(per_node.values(), default=0) <= 4, on.moves  # they settle: nobody chases anybody
    assert on_gaps < off_gaps / 2 and on_tokens > off_tokens


def _one_node_world(batching: bool, rate: float) -> dict:
    """A live-style world: one node serving 0:4 with a 20 ms step cost, 1 ms away."""
    node = dict(start=0, end=4, step_s=0.02, compute_s=0.001, batching=batching, delay_s=0.001, advertised_rps=190.0)
    return dict(nodes=[node], num_blocks=4, clients=3, prompt=6, tokens=16, rate=rate, arrivals_s=20.0,
                cfg={"load": 0.0}, gray_node=0)  # fmt: skip


def test_a_batching_node_serves_concurrent_sessions_in_one_step():
    """Live nodes batch decoding steps (one forward per iteration): at a load that swamps a
    first-in-first-out node, a batching node's tokens take a few steps; and a node
    with nobody else waiting takes one step either way."""
    busy = {b: sim.Simulation("live", "shortest", 0, duration=40.0, live=_one_node_world(b, 8.0)).run() for b in (0, 1)}
    assert busy[True]["p50_ms"] < 4 * 20 and busy[False]["p50_ms"] > 20 * 20, busy  # in steps of 20 ms
    idle = {b: sim.Simulation("live", "shortest", 0, duration=40.0, live=_one_node_world(b, 0.2)).run() for b in (0, 1)}
    for result in idle.values():
        assert 20 <= result["p50_ms"] < 30, idle


def test_a_live_run_without_batching_is_simulated_first_in_first_out():
    """`bench_routing_live.py --node-flags=--no-batching` records its flags; the calibrated
    simulator then serves that run's nodes one step after another, as the live ones did."""
    node = dict(span="0:4", step_ms=20, net_ms=1, advertised_rps=190.0)
    report = dict(nodes=[node], num_blocks=4, clients=3, prompt=6, tokens=16, gray={"node": 0})
    assert sim.live_world(report, 1.0, 20.0)["nodes"][0]["batching"]  # older runs: no flags recorded
    assert not sim.live_world({**report, "node_flags": "--no-batching"}, 1.0, 20.0)["nodes"][0]["batching"]
    assert sim.live_world({**report, "node_flags": "--batching"}, 1.0, 20.0)["nodes"][0]["batching"]


def test_admission_caps_a_first_in_first_out_nodes_queue_as_the_real_rule_does():
    """A live node refuses sessions past its step-time target (server/admission.py): its
    queue, and so a token's wait, stays under that target (here 1 s: 10 steps of 100 ms),
    the refused sessions wait for the hint instead; without the rule the queue grows unbounded."""
    world = _one_node_world(False, 2.0)
    world["nodes"][0]["step_s"] = 0.1
    capped = sim.Simulation("live", "shortest", 0, duration=60.0, live=world).run()
    unbounded = sim.Simulation("live", "shortest", 0, duration=60.0, live=world, admission=False).run()
    assert capped["refusals"] > 0 and capped["open_wait_ms"] > 1000, capped
    assert capped["p95_ms"] <= 1000 * 1.05, capped  # 10 sessions x (100 ms + 1 ms of compute)
    assert unbounded["refusals"] == 0 and unbounded["p95_ms"] > 2000, unbounded
