"""Admission control's decisions, pure: projected step times (batched, and queued from how long
sessions stay away), the default target, refusals."""

import pytest

from swarmnode.errors import NodeAtCapacity, NodeBusy
from swarmnode.server.admission import (
    MAX_RETRY_AFTER_S,
    Admission,
    Load,
    Returns,
    StepCost,
    closed_queue_step_s,
    default_max_step_s,
    kv_budget,
    peer_share,
    retry_after_s,
)


def test_step_cost_from_a_profile_with_and_without_batching():
    batched = StepCost.from_profile(single_s=0.005, batch_s=0.010, batch=8, batching=True)
    assert batched.extra_s == pytest.approx(0.005 / 7)
    assert batched.iteration_s(8, blocks=4) == pytest.approx(0.040)  # one batched step of 8, 4 blocks
    unbatched = StepCost.from_profile(single_s=0.005, batch_s=0.010, batch=8, batching=False)
    assert unbatched.iteration_s(8, blocks=4) == pytest.approx(8 * 4 * 0.005)  # each session its own step
    assert StepCost.from_profile(0.005, 0.004, 8, True).extra_s == 0.0  # noise never makes a row negative
    with pytest.raises(ValueError):
        StepCost(0.0, 0.1)


def test_the_default_target_is_the_nodes_share_of_a_second_per_token_but_never_a_handful_of_steps():
    cheap = StepCost(0.001, 0.0001)
    assert default_max_step_s(blocks=4, num_blocks=8, cost=cheap) == pytest.approx(0.5)
    slow = StepCost(0.2, 0.05)  # 0.8 s a step over 4 blocks: four of them
    assert default_max_step_s(blocks=4, num_blocks=8, cost=slow) == pytest.approx(3.2)


def test_a_node_admits_while_the_projected_step_fits_and_then_refuses_with_a_hint():
    admission = Admission(StepCost(0.010, 0.002), blocks=2, max_step_s=0.050)
    admission.check(0)  # an idle node always admits
    for held in range(8):  # 2 blocks × (10 + 2 × (n − 1)) ms ≤ 50 ms for up to n = 8 sessions
        admission.check(held)
    with pytest.raises(NodeAtCapacity) as refused:
        admission.check(8)
    assert isinstance(refused.value, NodeBusy) and refused.value.retryable
    assert 0 < refused.value.retry_after <= MAX_RETRY_AFTER_S
    assert "8 sessions" in str(refused.value) and "52 ms" in str(refused.value)


def test_the_hint_grows_with_the_overload_and_is_capped():
    assert retry_after_s(0.06, 0.05) < retry_after_s(0.5, 0.05) <= MAX_RETRY_AFTER_S
    assert retry_after_s(1e9, 0.05) == MAX_RETRY_AFTER_S


def test_the_kv_budget_and_the_session_limit_agree():
    assert kv_budget(None, 8192, 4096) == (8192, 8192), "by default one longest session fits"
    assert kv_budget(None, 2048, 4096) == (4096, 2048)
    assert kv_budget(256, 8192, 4096) == (256, 256), "a smaller budget given: the limit follows it"
    assert kv_budget(10_000, 8192, 4096) == (10_000, 8192)


def test_a_peers_share_is_never_below_one_session_of_the_maximum_length():
    assert peer_share(budget=8192 * 3, fraction=0.5, longest_session=8192 * 3) == 8192 * 3
    assert peer_share(budget=16384 * 3, fraction=0.5, longest_session=8192 * 3) == 8192 * 3
    assert peer_share(budget=40_000, fraction=0.75, longest_session=1_000) == 30_000
    assert peer_share(budget=500, fraction=0.5, longest_session=1_000) == 500, "capped by the budget"


def _exact_closed_queue_s(service_s: float, away_s: float, sessions: int) -> float:
    """Exact mean value analysis of a closed queue of identical sessions (the reference)."""
    waiting = 0.0
    for n in range(1, sessions + 1):
        step = service_s * (1 + waiting)
        waiting = n * step / (step + away_s)
    return step


def test_the_closed_queue_gives_the_worst_case_and_the_idle_case_at_its_extremes():
    assert closed_queue_step_s(0.1, [0.0] * 5)[-1] == pytest.approx(0.5)  # never away: wait for all the others
    assert closed_queue_step_s(0.1, [1e6] * 5)[-1] == pytest.approx(0.1, rel=1e-3)  # always away: never wait
    steps = [closed_queue_step_s(0.1, [0.3] * n)[-1] for n in range(1, 12)]
    assert steps == sorted(steps) and steps[0] == pytest.approx(0.1, rel=0.01), "more sessions never wait less"
    for n in (3, 5, 10):  # the approximation stays near exact analysis, and errs on the slow side
        exact = _exact_closed_queue_s(0.1, 0.3, n)
        assert exact * 0.98 <= closed_queue_step_s(0.1, [0.3] * n)[-1] <= exact * 1.2
    mixed = closed_queue_step_s(0.1, [0.0, 5.0])  # the one never away waits little for the one mostly away
    assert mixed[0] < 0.11 < mixed[1] < 0.21
    with pytest.raises(ValueError):
        closed_queue_step_s(0.1, [-1.0])


def test_a_sessions_time_away_is_measured_between_answer_and_next_step():
    returns = Returns()
    assert returns.away_s(5.0) is None  # nothing measured before its second step
    returns.arrived(0.0)
    returns.answered(0.1)
    returns.arrived(0.5)  # 0.4 s in the rest of the chain
    assert returns.away_s(0.55) == pytest.approx(0.4)  # in the node now
    returns.answered(0.6)
    assert returns.away_s(0.7) == pytest.approx(0.4)
    assert returns.away_s(10.6) == pytest.approx(10.0), "a session gone quiet is away at least that long"
    returns.arrived(1.6)  # a gap of 1 s: the average follows, weighted
    assert 0.4 < returns.away_s(1.6) < 1.0


def test_a_node_that_queues_admits_from_how_long_its_sessions_stay_away():
    cost = StepCost.from_profile(single_s=0.010, batch_s=0.080, batch=8, batching=False)
    admission = Admission(cost, blocks=2, max_step_s=0.080, queued=True)  # a step is 20 ms alone
    with pytest.raises(NodeAtCapacity):  # 4 sessions unmeasured: the worst case, 5 x 20 = 100 ms
        admission.check(4, Load((None,) * 4))
    admission.check(4, Load((0.5, None, None, None)))  # they come back every 0.5 s: ~21 ms a step
    away = Load((0.5,) * 16)  # busy ~60% of the time with 17
    assert admission.projected_step_s(16, away) < 0.060 < cost.iteration_s(17, 2)
    admission.check(16, away)  # 17 sessions where the worst case takes 4
    with pytest.raises(NodeAtCapacity):  # past ~20 the queue grows fast: 26 would wait ~4 steps each
        admission.check(25, Load((0.5,) * 25))
    with pytest.raises(NodeAtCapacity) as refused:  # they never leave: as many as the worst case allows
        admission.check(4, Load((0.0,) * 4))
    assert "100 ms" in str(refused.value)
    admission.check(3, Load((0.0,) * 3))
    busy = Admission(StepCost(0.010, 0.002), blocks=2, max_step_s=0.050)  # batching: the iteration decides
    assert busy.projected_step_s(8, Load((0.5,) * 8)) == pytest.approx(busy.cost.iteration_s(9, 2))
