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
