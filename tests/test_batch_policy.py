"""The batching decisions as pure functions: padding to a cheaper measured size, waiting for
steps predicted to arrive, and the predictions themselves."""

import pytest

from swarmnode.server.batch_policy import ArrivalModel, batch_cost, gather_wait, padding_plan

# Seconds per block measured at join on this project's 2-core CPU (wide-llama, hidden 1024):
# 2 and 3 rows cost more than 4.
MEASURED = [3.6, 7.3, 9.6, 6.3, 7.2, 7.4, 8.0, 7.7]


def test_padding_plan_pads_to_a_cheaper_measured_size_only():
    assert padding_plan(MEASURED) == (1, 4, 4, 4, 5, 6, 7, 8), "7 rows: 8 is cheaper, but within the margin"
    assert padding_plan(MEASURED, margin=0.0) == (1, 4, 4, 4, 5, 6, 8, 8)
    assert padding_plan([1.0, 1.5, 2.0]) == (1, 2, 3), "costs that grow with rows: never pad"
    assert padding_plan([2.0, 1.0, 1.0]) == (2, 2, 3), "among equally cheap sizes, the smallest"
    with pytest.raises(ValueError):
        padding_plan([1.0, 0.0])


def test_batch_cost_follows_the_padding_and_extrapolates_beyond_the_measured_sizes():
    cost = batch_cost(MEASURED, padding_plan(MEASURED))
    assert cost(1) == 3.6 and cost(2) == cost(3) == cost(4) == 6.3
    assert cost(10) == pytest.approx(7.7 + 2 * 0.0), "the last two measured decrease: no growth assumed"
    rising = batch_cost([1.0, 2.0, 3.0], (1, 2, 3))
    assert rising(5) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        batch_cost([1.0], (1,))


def iteration(n: int) -> float:  # 4 blocks of the measured costs, in milliseconds
    return 4 * batch_cost(MEASURED, padding_plan(MEASURED))(n)


def test_gather_waits_for_steps_due_soon_when_the_bigger_batch_serves_more_per_second():
    # One step waiting (14.4 ms alone: 69 steps/s); three more due in 2 ms: 4 in 27.2 ms (147/s).
    assert gather_wait(1, [2.0, 2.0, 2.0], iteration, max_wait_s=30.0) == (2.0, 3)
    # Two waiting already pay for a 4-row batch (25.2 ms): the third, due in 1 ms, is worth it
    # (3 in 26.2 ms), the fourth far later is not.
    assert gather_wait(2, [1.0, 25.0], iteration, max_wait_s=30.0) == (1.0, 1)


def test_gather_starts_now_when_waiting_does_not_pay_or_nothing_is_due_in_time():
    assert gather_wait(4, [5.0], iteration, max_wait_s=30.0) == (0.0, 0), "5 rows cost more; the wait too"
    assert gather_wait(1, [], iteration, max_wait_s=30.0) == (0.0, 0)
    assert gather_wait(1, [40.0, 50.0, 60.0], iteration, max_wait_s=30.0) == (0.0, 0), "beyond the bound"
    assert gather_wait(0, [1.0], iteration, max_wait_s=30.0) == (0.0, 0), "nothing to start"


def test_an_overdue_step_counts_as_due_now_until_it_is_far_overdue():
    assert gather_wait(1, [-3.0], iteration, max_wait_s=30.0) == (0.0, 1)
    assert gather_wait(1, [-31.0], iteration, max_wait_s=30.0) == (0.0, 0)


def test_arrival_model_learns_each_sessions_round_trip_and_forgets_idle_ones():
    model = ArrivalModel(smoothing=0.5, idle_after_s=2.0)
    model.arrived("a", 0.0)  # first step: nothing to learn from
    model.returned("a", 1.0)
    assert model.expected(1.0) == [], "no gap measured yet"
    model.arrived("a", 1.1)
    model.returned("a", 1.2)
    assert model.expected(1.2) == [pytest.approx(0.1)]
    model.arrived("a", 1.5)  # a gap of 0.3: smoothed to 0.2
    model.returned("a", 1.6)
    model.arrived("b", 1.6)  # b's step is waiting: it is not expected
    assert model.expected(1.6) == [pytest.approx(0.2)]
    assert model.expected(4.0) == [], "silent for over idle_after_s: forgotten"
    model.arrived("a", 4.0)
    model.returned("a", 4.1)
    assert model.expected(4.1) == [], "its gap was forgotten with it"


def test_a_long_pause_is_not_taken_for_a_round_trip():
    model = ArrivalModel(smoothing=0.5, idle_after_s=2.0)
    model.returned("a", 0.0)
    model.arrived("a", 0.1)
    model.returned("a", 0.2)
    model.arrived("a", 5.0)  # the user typed for a while
    model.returned("a", 5.1)
    assert model.expected(5.1) == [pytest.approx(0.1)]
