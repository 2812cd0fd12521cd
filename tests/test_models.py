"""Model families through their adapters, in-process (no network): every family's
blocks, run in spans with SwarmBee's KV cache, must reproduce transformers' own greedy
generation token for token; and a node reads only its own tensors."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from swarmnode.errors import ModelLoadError
from swarmnode.models import load_blocks, load_client_head, load_model_spec
from swarmnode.models.layout import pack_block
from swarmnode.server.backend import BlockBackend
from swarmnode.server.cache import SessionCache

SMALL = dict(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=256)
LLAMA_LIKE = dict(intermediate_size=64, num_key_value_heads=2, initializer_range=0.3)

CASES = {
    "llama-gqa": (LlamaForCausalLM, LlamaConfig(**SMALL, **LLAMA_LIKE, tie_word_embeddings=False)),
    "llama3-rope-scaling-tied": (
        LlamaForCausalLM,
        LlamaConfig(
            **SMALL,
            **LLAMA_LIKE,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "mistral-sliding-window": (MistralForCausalLM, MistralConfig(**SMALL, **LLAMA_LIKE, sliding_window=16)),
    "qwen2-attention-bias": (Qwen2ForCausalLM, Qwen2Config(**SMALL, **LLAMA_LIKE)),
    "opt": (OPTForCausalLM, OPTConfig(**SMALL, ffn_dim=64, init_std=0.3, word_embed_proj_dim=32)),
    "opt-projected": (OPTForCausalLM, OPTConfig(**SMALL, ffn_dim=64, init_std=0.3, word_embed_proj_dim=16)),
}


def write(tmp_path, name):
    model_cls, config = CASES[name]
    torch.manual_seed(0)
    model = model_cls(config)
    model.generation_config.eos_token_id = None
    path = tmp_path / name
    model.save_pretrained(path, max_shard_size="20KB")
    return str(path)


def blocks(spec, start, end, layout):
    """Blocks start:end in ``layout``; packed here means every layer, however small (in service
    layers under PACK_MIN_WEIGHTS stay dense, and these test models' layers all are)."""
    loaded = load_blocks(spec, start, end, "cpu", torch.float32)
    if layout == "packed":
        for block in loaded.blocks:
            pack_block(block, min_weights=0)
    return loaded


def generate_through_spans(path, spans, prompt, new_tokens, layout="dense"):
    spec = load_model_spec(path)
    head, _ = load_client_head(spec)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    backends = [BlockBackend(spec, blocks(spec, s, e, layout), "cpu", torch.float32) for s, e in spans]
    caches = [SessionCache(s, e, 1, 64, kv_heads, head_dim, torch.float32, "cpu") for s, e in spans]

    tokens, new = prompt, prompt
    with torch.inference_mode():
        for _ in range(new_tokens):
            past = tokens.shape[1] - new.shape[1]
            hidden = head.embed(new, torch.arange(past, tokens.shape[1])[None])
            for backend, cache in zip(backends, caches, strict=True):
                hidden = backend.forward(hidden, backend.start, backend.end, cache)
            new = head.logits(hidden)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, new], 1)
    return tokens


def generate_batched(path, prompts, new_tokens, pad=0, layout="dense"):
    """Greedy generation of several sessions at once: each prompt alone, then every decoding
    step of all sessions as one batched forward (BlockBackend.forward_batch, with ``pad``
    empty rows) over two spans.
    Returns each session's tokens and the largest relative difference between a batched
    step's output and the same step run alone."""
    spec = load_model_spec(path)
    head, _ = load_client_head(spec)
    kv_heads, head_dim = spec.family.kv_heads_and_dim(spec.config)
    spans = [(0, 2), (2, spec.num_blocks)]
    backends = [BlockBackend(spec, blocks(spec, s, e, layout), "cpu", torch.float32) for s, e in spans]

    def new_caches():
        return [SessionCache(s, e, 1, 64, kv_heads, head_dim, torch.float32, "cpu") for s, e in spans]

    caches = [new_caches() for _ in prompts]
    tokens = list(prompts)
    worst = 0.0
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            hidden = head.embed(prompt, torch.arange(prompt.shape[1])[None])
            for b, backend in enumerate(backends):
                hidden = backend.forward(hidden, backend.start, backend.end, caches[i][b])
            tokens[i] = torch.cat([prompt, head.logits(hidden)[:, -1].argmax(-1, keepdim=True)], 1)
        for _ in range(new_tokens - 1):
            hiddens = [head.embed(t[:, -1:], torch.tensor([[t.shape[1] - 1]])) for t in tokens]
            for b, backend in enumerate(backends):
                step_caches = [c[b] for c in caches]
                alone = []
                for h, cache in zip(hiddens, step_caches, strict=True):  # the same step, alone, then undone
                    alone.append(backend.forward(h, backend.start, backend.end, cache))
                    cache.rollback(cache.length - 1)
                hiddens = backend.forward_batch(
                    hiddens, backend.start, backend.end, step_caches, rows=len(hiddens) + pad
                )
                worst = max(worst, *(float((a - h).norm() / a.norm()) for a, h in zip(alone, hiddens, strict=True)))
            for i, hidden in enumerate(hiddens):
                tokens[i] = torch.cat([tokens[i], head.logits(hidden)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens, worst


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_family_matches_transformers_token_for_token(tmp_path, name, layout):
    """Both weight layouts (models/layout.py): packed differs from transformers by rounding only."""
    path = write(tmp_path, name)
    prompt = torch.tensor([[5, 17, 99, 3, 42, 7]])
    ours = generate_through_spans(path, [(0, 1), (1, 3), (3, 4)], prompt, 24, layout)  # 30 tokens > window 16
    reference = AutoModelForCausalLM.from_pretrained(path).generate(prompt, max_new_tokens=24, do_sample=False)
    assert torch.equal(ours, reference)
    assert len(set(ours[0, 6:].tolist())) > 5, "random weights should give varied tokens"


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("pad", [0, 2], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_decoding_matches_transformers_for_every_session(tmp_path, name, pad, layout):
    """Continuous batching: sessions of different lengths (past the sliding window) decode in
    one forward per block, each with its own cache and positions, with or without empty padding
    rows; each equals transformers' own generation of its prompt, and each batched step is
    within float rounding of the same step alone."""
    path = write(tmp_path, name)
    prompts = [
        torch.tensor([[5, 17, 99, 3, 42, 7]]),
        torch.tensor([[8, 13]]),  # no token 1: OPT's pad id, which generate() would mask
        torch.tensor([[60, 61, 62, 9, 9, 4, 22, 31, 7, 3, 11]]),
    ]
    ours, worst = generate_batched(path, prompts, 22, pad, layout)
    reference = AutoModelForCausalLM.from_pretrained(path)
    for prompt, tokens in zip(prompts, ours, strict=True):
        assert torch.equal(tokens, reference.generate(prompt, max_new_tokens=22, do_sample=False))
    assert worst < 1e-5, f"a batched step differs from the same step alone by {worst:.2e} (relative)"


def test_partial_loading_reads_only_the_span(llama_path):
    spec = load_model_spec(llama_path)
    total = sum(t.numel() for t in spec.checkpoint.load_tensors(spec.checkpoint.tensor_names).values())
    loaded = load_blocks(spec, 6, 8, "cpu", torch.float32)
    assert loaded.loaded_parameters / total < 0.40
    assert loaded.loaded_parameters == sum(p.numel() for p in loaded.blocks.parameters())
    assert len(spec.checkpoint.weight_map) > 1 and len(set(spec.checkpoint.weight_map.values())) > 2  # sharded


def test_partial_loading_opens_only_needed_shards(llama_path, monkeypatch):
    import swarmnode.models.checkpoint as ckpt

    spec = load_model_spec(llama_path)
    opened = []
    real = ckpt.safe_open
    monkeypatch.setattr(ckpt, "safe_open", lambda path, **kw: opened.append(path) or real(path, **kw))
    load_blocks(spec, 6, 8, "cpu", torch.float32)
    needed = {spec.checkpoint.weight_map[n] for n in spec.checkpoint.weight_map if n.startswith("model.layers.6.")}
    needed |= {spec.checkpoint.weight_map[n] for n in spec.checkpoint.weight_map if n.startswith("model.layers.7.")}
    assert {p.rsplit("/", 1)[-1] for p in opened} == needed
    assert len(needed) < len(set(spec.checkpoint.weight_map.values()))


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError):
        load_model_spec(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_spec(str(tmp_path / "empty"))
