"""Small random-weight checkpoints for the demo, tests and benchmarks.

They are written with ``save_pretrained`` into sharded safetensors with an index file,
exactly like a real hub checkpoint, so the loading path under test is the real one.
Weights use a large initializer spread so greedy outputs change from token to token:
a model that repeats one token could not tell a broken chain from a working one.
A byte-level tokenizer (256 bytes + <s>, </s>) is saved beside them so text works.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

VOCAB_SIZE = 260  # 256 byte tokens, <s>, </s>, 2 spare rows
BOS_ID, EOS_ID = 256, 257

PRESETS: dict[str, dict] = {
    # Llama-like with grouped-query attention (4 query heads share 2 key/value heads).
    "tiny-llama": dict(
        family="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "tiny-opt": dict(family="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=8, num_attention_heads=4),
    # The demo's default: a little wider so per-token work is not all overhead.
    "demo-llama": dict(
        family="llama",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
    ),
    # Compute dominates: ~61 MB of fp32 weights per block, so a decoding step reads weights the way
    # a real model's does (scripts/bench_throughput.py). Larger shards: 500 MB in 200 KB files is absurd.
    "wide-llama": dict(
        family="llama",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        shard_size="100MB",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("SWARMNODE_CACHE", Path.home() / ".cache" / "swarmnode")) / "models"


def tiny_checkpoint(preset: str = "tiny-llama", root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Path of the preset's checkpoint, written once and cached (atomically)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    target = Path(root) if root is not None else cache_root() / f"{preset}-s{seed}-v1"
    if (target / "model.safetensors.index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_checkpoint(tmp, seed=seed, **PRESETS[preset])
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_checkpoint(path: Path, family: str, seed: int = 0, shard_size: str = "200KB", **sizes) -> None:
    """Write a random-weight checkpoint of ``family`` with ``sizes`` to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=2048, bos_token_id=BOS_ID, eos_token_id=None)
    if family == "llama":
        config = LlamaConfig(initializer_range=0.3, tie_word_embeddings=False, **common, **sizes)
        model = LlamaForCausalLM(config)
    elif family == "opt":
        config = OPTConfig(init_std=0.3, word_embed_proj_dim=sizes["hidden_size"], **common, **sizes)
        model = OPTForCausalLM(config)
    else:
        raise ValueError(f"unknown family {family!r}")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(path, max_shard_size=shard_size)
    byte_level_tokenizer().save_pretrained(path)


def byte_level_tokenizer():
    """A byte-level tokenizer: every byte is a token, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of)
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": BOS_ID, "</s>": EOS_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes→unicode table, so token id == byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table[ch]
