"""The same end-to-end check for the OPT family: bootstrap + 3 nodes on 127.0.0.1."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode import DistributedModelForCausalLM
from tests.conftest import start_swarm

pytestmark = pytest.mark.swarm


def test_opt_greedy_64_tokens_equal_local_generation(tmp_path, opt_path):
    prompt = torch.tensor([[10, 20, 30, 40, 50]])
    swarm = start_swarm(tmp_path, opt_path, ("0:3", "3:6", "6:8"))
    try:
        with DistributedModelForCausalLM.from_pretrained(opt_path, initial_peers=swarm.initial_peers) as model:
            out = model.generate(prompt, max_new_tokens=64)
            torch.manual_seed(7)
            sampled = model.generate(prompt, max_new_tokens=32, do_sample=True, top_k=20)
    finally:
        swarm.close()
    reference = AutoModelForCausalLM.from_pretrained(opt_path)
    assert torch.equal(out, reference.generate(prompt, max_new_tokens=64, do_sample=False))
    assert len(set(out[0, 5:].tolist())) > 10
    torch.manual_seed(7)
    assert torch.equal(sampled, reference.generate(prompt, max_new_tokens=32, do_sample=True, top_k=20))
