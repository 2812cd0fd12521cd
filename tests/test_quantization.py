"""Quantized blocks (int8, nf4 with bitsandbytes on CPU): their bytes, held to quality bounds on
the real model the project ships, and nodes serving them in a live swarm, chosen only by clients
that accept their precision."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarmnode import DistributedModelForCausalLM
from swarmnode.client.verify import tolerance
from swarmnode.errors import NoServersForBlocks
from swarmnode.launcher import LocalSwarm
from swarmnode.models import block_bytes, load_blocks, load_model_spec
from swarmnode.models.quantize import batching_allowed, measured_block_bytes, quantize_block
from swarmnode.records import precise_enough
from swarmnode.server.backend import BlockBackend
from swarmnode.server.cache import SessionCache
from tests.conftest import status_cli

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves."]
TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines that riders pushed along with their feet."
)
# Bounds for this test's 2 prompts x 32 greedy steps and its text (scripts/bench_quantization.py
# measures 256 steps: int8 93.4%, nf4 78.5% agreement; perplexity -0.1% and +6.7%; this sample:
# int8 89.1%). Until 2026-11-28 the quantized layers ran in training mode here, which bitsandbytes
# computes differently (int8 then agreed 95.7%, and the int8 bound was 0.90); nodes run them in
# eval mode, as now measured.
BOUNDS = {"int8": (0.85, 1.03), "nf4": (0.65, 1.15)}  # (least top-1 agreement, most perplexity ratio)


def test_precision_order_and_unknown_formats():
    assert precise_enough("none", "int8") and precise_enough("int8", "int8") and precise_enough("int8", "nf4")
    assert not precise_enough("nf4", "int8") and not precise_enough("int8", "none")
    assert not precise_enough("fp3", "nf4"), "an unknown format is not trusted to be precise"
    with pytest.raises(ValueError):
        precise_enough("none", "int4")
    assert tolerance("float32", "nf4") > tolerance("float32", "int8") > tolerance("float32")


@pytest.mark.parametrize("quant", ["none", "int8", "nf4"])
def test_the_capacity_formula_matches_the_bytes_a_loaded_block_holds(llama_path, quant):
    spec = load_model_spec(llama_path)
    loaded = load_blocks(spec, 0, 2, "cpu", torch.float32, quant=quant)
    measured = measured_block_bytes(loaded.blocks[0])
    assert abs(block_bytes(spec, torch.float32, quant) - measured) <= 0.01 * measured
    if quant != "none":
        assert measured < block_bytes(spec, torch.float32, "none") / (3 if quant == "int8" else 5)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    sequences = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
            ids = tokenizer(text, return_tensors="pt").input_ids
            out = reference.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
            sequences.append((out, ids.shape[1]))
    return reference, tokenizer, sequences


@torch.inference_mode()
def quality(model, tokenizer, sequences) -> tuple[float, float]:
    same = total = 0
    for ids, prompt_len in sequences:
        predicted = model(ids).logits[0, prompt_len - 1 : -1].argmax(-1)
        same += int((predicted == ids[0, prompt_len:]).sum())
        total += ids.shape[1] - prompt_len
    text = tokenizer(TEXT, return_tensors="pt").input_ids
    loss = torch.nn.functional.cross_entropy(model(text).logits[0, :-1], text[0, 1:])
    return same / total, float(loss.exp())


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_smollm2_stays_within_its_quality_bound(smollm2, smollm2_path, quant):
    reference, tokenizer, sequences = smollm2
    _, base_ppl = quality(reference, tokenizer, sequences)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    for i, layer in enumerate(model.model.layers):
        model.model.layers[i] = quantize_block(layer, quant, torch.float32).to("cpu")
    agreement, ppl = quality(model, tokenizer, sequences)
    least_agreement, most_ppl = BOUNDS[quant]
    assert agreement >= least_agreement, f"{quant}: top-1 agreement {agreement:.2%}"
    assert ppl <= most_ppl * base_ppl, f"{quant}: perplexity {ppl:.3f} against {base_ppl:.3f}"
    assert agreement < 1.0 or ppl != base_ppl, "the weights were quantized"


@pytest.mark.swarm
def test_a_client_that_requires_full_precision_never_uses_a_quantized_node(tmp_path, llama_path):
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    expected = AutoModelForCausalLM.from_pretrained(llama_path).generate(prompt, max_new_tokens=8, do_sample=False)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_bootstrap()
        quantized = swarm.start_node(llama_path, "0:8", "--quant", "int8")
        with DistributedModelForCausalLM.from_pretrained(
            llama_path, initial_peers=swarm.initial_peers, min_precision="none", wait_for_servers=2
        ) as strict:
            with pytest.raises(NoServersForBlocks):  # the only node is int8
                strict.generate(prompt, max_new_tokens=2)
            full = swarm.start_node(llama_path, "0:8")
            with strict.inference_session(max_length=32) as session:
                out = strict.generate(prompt, max_new_tokens=8, session=session)
                assert [hop.peer_id for hop in session.chain] == [full.info["peer_id"]]
        assert torch.equal(out, expected)
        with DistributedModelForCausalLM.from_pretrained(
            llama_path, initial_peers=swarm.initial_peers, routing="shortest"
        ) as anyone:  # accepts every format: generates through whichever node
            assert anyone.generate(prompt, max_new_tokens=8).shape == expected.shape
        nodes = {n["peer_id"]: n for n in status_cli(swarm.initial_peers)["nodes"]}
        assert nodes[quantized.info["peer_id"]]["quantization"] == "int8"
        # int8 rows interact (LLM.int8's outlier columns): that node never batches sessions
        assert (quantized.info["batching"], full.info["batching"]) == ("off", "on")
        assert nodes[full.info["peer_id"]]["quantization"] == "none"


@pytest.mark.parametrize("quant", ["none", "int8", "nf4"])
def test_only_row_coupled_formats_turn_batching_off(llama_path, quant):
    """Why int8 nodes never batch sessions: LLM.int8 picks outlier features over all rows of a
    matmul, so a session's step batched with another's differs from the same step alone by far
    more than rounding; nf4 (dequantized, then a dense matmul) and none do not."""
    spec = load_model_spec(llama_path)
    backend = BlockBackend(spec, load_blocks(spec, 0, 4, "cpu", torch.float32, quant=quant), "cpu", torch.float32)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    caches = [SessionCache(0, 4, 1, 16, kv_heads, head_dim, torch.float32, "cpu") for _ in range(2)]
    torch.manual_seed(0)
    steps = [torch.randn(1, 1, spec.hidden_size), 8 * torch.randn(1, 1, spec.hidden_size)]  # the second has outliers
    with torch.inference_mode():
        alone = backend.forward(steps[0], 0, 4, caches[0])
        caches[0].rollback(0)
        together = backend.forward_batch(steps, 0, 4, caches)[0]
    change = float((alone - together).norm() / alone.norm())
    assert batching_allowed(quant) == (quant != "int8")
    assert (change > 1e-3) == (not batching_allowed(quant)), f"{quant}: batched vs alone {change:.1e}"


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_a_quantized_layer_keeps_the_mode_of_the_layer_it_replaces(llama_path, quant):
    """bitsandbytes computes differently in training mode: a block quantized after .eval() (as
    the scripts' references are) must compute exactly what a node's loaded block computes."""
    spec = load_model_spec(llama_path)
    served = load_blocks(spec, 0, 1, "cpu", torch.float32, quant=quant).blocks[0]
    model = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()
    rebuilt = quantize_block(model.model.layers[0], quant, torch.float32).to("cpu")
    assert not any(m.training for m in rebuilt.modules())
    hidden = 3 * torch.randn(1, 5, spec.hidden_size)
    positions = torch.arange(5)[None]
    with torch.inference_mode():
        rotary = model.model.rotary_emb(hidden, positions)
        ours = served(hidden, position_embeddings=rotary, position_ids=positions)
        theirs = rebuilt(hidden, position_embeddings=rotary, position_ids=positions)
    ours, theirs = (o[0] if isinstance(o, tuple) else o for o in (ours, theirs))
    assert torch.equal(ours, theirs)
