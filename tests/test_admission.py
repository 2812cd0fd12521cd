"""Admission control's decisions, pure: projected step times, the default target, refusals."""

import pytest

from swarmnode.errors import NodeAtCapacity, NodeBusy
from swarmnode.server.admission import (
    MAX_RETRY_AFTER_S,
    Admission,
    StepCost,
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
