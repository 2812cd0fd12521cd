"""Spot-check decisions, pure: which steps are checked, and when two outputs agree."""

import torch

from swarmnode.client.verify import agree, due, relative_difference, tolerance


def test_a_fraction_of_steps_is_checked_evenly_and_never_late():
    assert not any(due(step, 0.0) for step in range(1, 100))
    assert all(due(step, 1.0) for step in range(1, 100))
    checked = [step for step in range(1, 101) if due(step, 0.25)]
    assert (
        len(checked) == 25 and checked[0] == 4 and all(b - a == 4 for a, b in zip(checked, checked[1:], strict=False))
    )
    assert sum(due(step, 0.1) for step in range(1, 1001)) == 100


def test_honest_outputs_agree_and_small_noise_does_not():
    torch.manual_seed(0)
    out = torch.randn(1, 3, 64)
    assert agree(out, out.clone())
    assert agree(out, out.to(torch.bfloat16).float(), dtypes=("float32", "bfloat16"))  # a bf16 replica: tolerated
    assert not agree(out, out.to(torch.bfloat16).float())  # two fp32 nodes: held to fp32
    noisy = out + 1e-2 * out.std() * torch.randn_like(out)
    assert relative_difference(out, noisy) > tolerance(torch.float32)
    assert not agree(out, noisy)
    assert not agree(out, out[..., :-1])


def test_steps_are_joined_up_to_a_token_limit_and_padded_steps_only_with_padded_ones():
    from swarmnode.client.steps import StepInput, merge_steps

    plain = [StepInput(torch.full((1, n, 4), float(i))) for i, n in enumerate((5, 1, 1, 1, 3))]
    joined = merge_steps(plain, max_tokens=7)
    assert [s.tokens for s in joined] == [7, 4]  # 5+1+1, then 1+3
    assert torch.equal(torch.cat([s.hidden for s in joined], 1), torch.cat([s.hidden for s in plain], 1))
    assert [s.tokens for s in merge_steps([StepInput(torch.zeros(1, 9, 4))], max_tokens=4)] == [9]  # never split
    padded = StepInput(torch.zeros(2, 2, 4), torch.ones(2, 2), torch.arange(2).repeat(2, 1))
    mixed = merge_steps([padded, padded, plain[1]], max_tokens=100)
    assert [(s.tokens, s.mask is not None) for s in mixed] == [(4, True), (1, False)]
    assert torch.equal(mixed[0].positions, torch.tensor([[0, 1, 0, 1], [0, 1, 0, 1]]))
