"""Real checkpoints behave as transformers does: padded batches, generation defaults,
loading quirks, per-layer sliding windows, mismatched checkpoints, --dtype auto."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from swarmnode.errors import ModelLoadError, ModelMismatch
from swarmnode.models import load_blocks, load_model_spec
from swarmnode.records import model_id_from_name
from swarmnode.server.dtype_choice import BF16_MIN_SPEEDUP, choose_dtype
from tests.conftest import start_swarm, swarm_client
from tests.test_models import generate_through_spans

PAD = 0
# Two prompts of different lengths, left-padded (0 = padding), as a tokenizer with padding_side="left" gives.
BATCH = torch.tensor([[PAD, PAD, PAD, 72, 101, 108, 108, 111], [65, 32, 115, 119, 97, 114, 109, 32]])
MASK = (torch.arange(BATCH.shape[1]) >= torch.tensor([[3], [0]])).long()


@pytest.fixture(scope="module")
def opt_swarm(tmp_path_factory, opt_path):
    swarm = start_swarm(tmp_path_factory.mktemp("opt-swarm"), opt_path, ("0:4", "4:8"))
    yield swarm
    swarm.close()


@pytest.fixture(scope="module")
def opt_client(opt_swarm, opt_path):
    with swarm_client(opt_swarm, opt_path) as model:
        yield model


@pytest.mark.swarm
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_left_padded_batch_with_attention_mask_equals_transformers(request, family):
    client = request.getfixturevalue(f"{family}_client")
    path = request.getfixturevalue(f"{family}_path")
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    ours = client.generate(BATCH, attention_mask=MASK, max_new_tokens=24, pad_token_id=PAD)
    with torch.inference_mode():
        local = reference.generate(BATCH, attention_mask=MASK, max_new_tokens=24, pad_token_id=PAD)
    assert torch.equal(ours, local)
    # The padding mattered: the short prompt's continuation differs from what it gives unpadded... and matches alone.
    alone = reference.generate(BATCH[:1, 3:], max_new_tokens=24, pad_token_id=PAD)
    assert ours[0, 8:].tolist() == alone[0, 5:].tolist()


@pytest.mark.swarm
def test_stateless_forward_with_a_padding_mask_equals_transformers(llama_client, llama_path, opt_client, opt_path):
    for client, path in ((llama_client, llama_path), (opt_client, opt_path)):
        reference = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.inference_mode():
            local = reference(BATCH, attention_mask=MASK).logits
        ours = client(BATCH, attention_mask=MASK)
        real = MASK.bool()
        torch.testing.assert_close(ours[real], local[real], rtol=1e-4, atol=1e-4)
    # Explicit position ids reach the nodes (rotary embeddings), not just the client's embedding.
    shifted = torch.arange(BATCH.shape[1])[None] + 7
    with torch.inference_mode():
        local = AutoModelForCausalLM.from_pretrained(llama_path).eval()(BATCH, position_ids=shifted).logits
    torch.testing.assert_close(llama_client(BATCH, position_ids=shifted), local, rtol=1e-4, atol=1e-4)


@pytest.mark.swarm
def test_mask_is_inferred_from_pad_tokens_like_transformers(llama_client, llama_reference):
    # No attention_mask: a pad token (distinct from eos) in the prompt is masked, as transformers infers it.
    prompt = torch.tensor([[5, 5, 72, 101, 108, 5, 111]])
    ours = llama_client.generate(prompt, max_new_tokens=16, pad_token_id=5)
    with torch.inference_mode():
        local = llama_reference.generate(prompt, max_new_tokens=16, pad_token_id=5)
        unmasked = llama_reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16)
    assert torch.equal(ours, local)
    assert not torch.equal(local, unmasked), "the inferred mask must change the result for this test to mean anything"


@pytest.mark.swarm
def test_generation_config_sampling_defaults_are_honoured(tmp_path, llama_swarm, llama_path):
    from swarmnode import DistributedModelForCausalLM

    folder = tmp_path / "sampling-defaults"
    shutil.copytree(llama_path, folder)
    defaults = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_new_tokens": 24}
    (folder / "generation_config.json").write_text(json.dumps({**defaults, "bos_token_id": 256}))
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([[72, 101, 108, 108, 111]])
    with DistributedModelForCausalLM.from_pretrained(
        str(folder), initial_peers=llama_swarm.initial_peers, model_id=model_id_from_name(llama_path)
    ) as client:
        torch.manual_seed(1234)
        ours = client.generate(prompt)  # no arguments: everything from generation_config.json
        seeded = client.generate(prompt, generator=torch.Generator().manual_seed(1234))
    torch.manual_seed(1234)
    with torch.inference_mode():
        local = reference.generate(prompt)
    assert ours.shape[1] == prompt.shape[1] + 24
    assert torch.equal(ours, local)
    assert torch.equal(seeded, local)  # a generator seeded alike draws the same tokens
    greedy = reference.generate(prompt, do_sample=False, max_new_tokens=24)
    assert not torch.equal(local, greedy), "sampling defaults must make a difference"


def test_older_checkpoints_with_rotary_buffers_load_and_missing_tensors_are_named(tmp_path, llama_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "with-inv-freq"
    shutil.copytree(llama_path, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(folder / shard)
    extra = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.rand(8) for i in range(8)}
    save_file({**tensors, **extra}, folder / shard)
    index["weight_map"].update({name: shard for name in extra})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    spec = load_model_spec(str(folder))
    assert len(load_blocks(spec, 0, 8, "cpu", torch.float32).blocks) == 8  # transformers ignores them; so do we

    for name in ("model.layers.2.mlp.up_proj.weight", "model.layers.3.input_layernorm.weight"):
        del index["weight_map"][name]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as error:
        load_blocks(load_model_spec(str(folder)), 0, 8, "cpu", torch.float32)
    message = str(error.value)
    assert "model.layers.2.mlp.up_proj.weight" in message and "model.layers.3.input_layernorm.weight" in message
    assert "lacks 2 tensors" in message


def test_qwen2_slides_only_on_the_layers_transformers_slides_on(tmp_path):
    config = Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.3, use_sliding_window=True, sliding_window=8, max_window_layers=2,
    )  # fmt: skip
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path / "qwen2", max_shard_size="20KB")
    spec = load_model_spec(str(tmp_path / "qwen2"))
    assert [spec.family.layer_window(spec.config, i) for i in range(4)] == [None, None, 8, 8]
    prompt = torch.tensor([[5, 17, 99, 3, 42, 7]])
    ours = generate_through_spans(str(tmp_path / "qwen2"), [(0, 1), (1, 3), (3, 4)], prompt, 20)  # 26 > window 8
    with torch.inference_mode():
        local = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen2").generate(prompt, max_new_tokens=20)
    assert torch.equal(ours, local)


@pytest.mark.swarm
def test_client_and_node_refuse_a_different_checkpoint(tmp_path, llama_swarm, llama_path, llama_client):
    from swarmnode import DistributedModelForCausalLM
    from swarmnode.client.session import StepInput

    folder = tmp_path / "other-checkpoint"
    shutil.copytree(llama_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config.get("rms_norm_eps") != 1e-5 else 1e-6
    (folder / "config.json").write_text(json.dumps(config))
    model_id = model_id_from_name(llama_path)
    with DistributedModelForCausalLM.from_pretrained(
        str(folder), initial_peers=llama_swarm.initial_peers, model_id=model_id
    ) as other:
        with pytest.raises(ModelMismatch) as error:
            other.generate(torch.tensor([[72, 101]]), max_new_tokens=2)
        ours, theirs = other.remote.config_hash, llama_client.remote.config_hash
        assert ours in str(error.value) and theirs in str(error.value)
        # A node asked directly, past the client's own check, refuses too, naming both hashes.
        other.remote._model_checked = True
        session = other.inference_session(max_length=8)
        hop = llama_client.remote.connection.run(llama_client.remote.find_chain())[0]
        state = session._new_state(hop)

        async def ask():
            from swarmnode.net.protocol import read_response
            from swarmnode.net.stream import NodeStream

            state.stream = await NodeStream.open(other.remote.connection.p2p, hop.peer_id)
            await state.stream.send(session._request(state, StepInput(torch.zeros(1, 1, 64)), 0))
            try:
                read_response(await state.stream.recv(), hop.peer_id)
            finally:
                await state.stream.close()

        with pytest.raises(ModelMismatch) as refused:
            other.remote.connection.run(ask())
        assert ours in str(refused.value) and theirs in str(refused.value)


@pytest.mark.swarm
def test_a_node_with_a_different_checkpoint_cannot_join(tmp_path, llama_swarm, llama_path):
    folder = tmp_path / "other-node-checkpoint"
    shutil.copytree(llama_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (folder / "config.json").write_text(json.dumps(config))
    from swarmnode.launcher import LocalSwarm

    with LocalSwarm(tmp_path / "mismatch") as outsider:  # its own process list: the shared swarm stays all alive
        outsider.initial_peers = list(llama_swarm.initial_peers)
        node = outsider.start_node(str(folder), "0:2", "--model-id", model_id_from_name(llama_path), wait=False)
        assert node.popen.wait(120) == 2
        log = node.log_path.read_text()
    assert "config hash" in log and "Traceback" not in log


def test_dtype_auto_is_a_pure_decision():
    assert choose_dtype(torch.float32, "cpu").dtype == torch.float32
    assert choose_dtype(torch.float16, "cpu").dtype == torch.float32  # CPUs emulate fp16
    assert choose_dtype(torch.bfloat16, "cpu", bf16_speedup=0.9).dtype == torch.float32
    fast = choose_dtype(torch.bfloat16, "cpu", bf16_speedup=BF16_MIN_SPEEDUP + 1)
    assert fast.dtype == torch.bfloat16 and "faster" in fast.reason
    assert choose_dtype(torch.bfloat16, "cuda:0").dtype == torch.bfloat16
    assert choose_dtype(torch.float16, "cuda").dtype == torch.float16
