"""Attacks on results with real processes: nodes that answer NaNs or the wrong shape are
caught at their own hop and replaced; the generation completes with the exact output."""

from __future__ import annotations

import threading

import pytest
import torch

from swarmnode.launcher import LocalSwarm
from tests.conftest import swarm_client

pytestmark = pytest.mark.swarm


def test_nodes_returning_nan_or_the_wrong_shape_are_failed_over(tmp_path, llama_path, llama_reference):
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        first = swarm.start_node(llama_path, "0:4", wait=False)
        broken = [swarm.start_node(llama_path, "4:8", "--debug-corrupt-output", how, wait=False)
                  for how in ("nan", "shape")]  # fmt: skip
        for node in (first, *broken):
            swarm.wait_online(node)
        bad_peers = {node.info["peer_id"] for node in broken}
        # The only honest replica of 4:8 arrives while the client is already failing over.
        late = threading.Timer(3.0, lambda: swarm.start_node(llama_path, "4:8", name="honest-4_8"))
        late.start()
        try:
            with swarm_client(swarm, llama_path) as model:
                prompt = torch.tensor([[5, 9, 2, 7, 1]])
                with model.inference_session(max_length=32) as session:
                    out = model.generate(prompt, max_new_tokens=8, session=session)
                    failed = {event.failed.peer_id: event.reason for event in session.failovers}
        finally:
            late.join()
        assert torch.equal(out, llama_reference.generate(prompt, max_new_tokens=8, do_sample=False))
        assert set(failed) <= bad_peers and failed, failed
        reasons = " ".join(failed.values())
        assert "NaN" in reasons or "shape" in reasons, reasons
        assert all(p.alive() for p in swarm.processes)
