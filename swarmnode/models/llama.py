"""Llama-like decoders: Llama 2/3 (all RoPE scalings), Mistral, Qwen2.

They share one layout: ``model.layers.{i}`` blocks with RMSNorm, rotary position
embeddings and grouped-query attention (Qwen2 adds attention biases, Mistral a sliding
window). We reuse transformers' own block, norm and rotary classes, so every RoPE
variant that transformers supports comes for free.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers import PretrainedConfig

from swarmnode.models.base import ClientHead, ModelFamily, load_into
from swarmnode.models.checkpoint import Checkpoint

_CLASS_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


def _classes(config: PretrainedConfig) -> tuple[type, type, type]:
    """(DecoderLayer, RotaryEmbedding, RMSNorm) classes of this model type."""
    model_type = config.model_type
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = _CLASS_PREFIX[model_type]
    return (
        getattr(module, f"{prefix}DecoderLayer"),
        getattr(module, f"{prefix}RotaryEmbedding"),
        getattr(module, f"{prefix}RMSNorm"),
    )


class LlamaHead(ClientHead):
    def __init__(self, embed_tokens: nn.Embedding, norm: nn.Module, lm_head: nn.Linear):
        super().__init__()
        self.embed_tokens, self.norm, self.lm_head = embed_tokens, norm, lm_head

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))


class LlamaFamily(ModelFamily):
    name = "llama"
    model_types = tuple(_CLASS_PREFIX)

    def num_blocks(self, config: PretrainedConfig) -> int:
        return int(config.num_hidden_layers)

    def block_prefix(self, config: PretrainedConfig, index: int) -> str:
        return f"model.layers.{index}."

    def new_block(self, config: PretrainedConfig, index: int) -> nn.Module:
        layer_cls, _, _ = _classes(config)
        return layer_cls(config, index)

    def kv_heads_and_dim(self, config: PretrainedConfig) -> tuple[int, int]:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return int(kv_heads), int(head_dim)

    def layer_window(self, config: PretrainedConfig, index: int) -> int | None:
        # Qwen2 lists a type per layer (sliding only from max_window_layers on, and only with
        # use_sliding_window); Mistral slides on every layer; Llama never does.
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            return getattr(config, "sliding_window", None) if layer_types[index] == "sliding_attention" else None
        if config.model_type == "mistral":
            return getattr(config, "sliding_window", None)
        return None

    def new_step_aux(self, config: PretrainedConfig) -> nn.Module:
        _, rotary_cls, _ = _classes(config)
        return rotary_cls(config)

    def extra_block_kwargs(self, aux, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict:
        return {"position_embeddings": aux(hidden, position_ids)}

    def head_tensor_names(self, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if "lm_head.weight" in checkpoint.weight_map:
            names.append("lm_head.weight")
        return names

    def new_head(self, config: PretrainedConfig, tensors: dict[str, torch.Tensor]) -> ClientHead:
        _, _, norm_cls = _classes(config)
        embed = tensors["model.embed_tokens.weight"]
        with torch.device("meta"):
            head = LlamaHead(
                nn.Embedding(config.vocab_size, config.hidden_size),
                norm_cls(config.hidden_size, eps=config.rms_norm_eps),
                nn.Linear(config.hidden_size, config.vocab_size, bias=False),
            )
        state = {
            "embed_tokens.weight": embed,
            "norm.weight": tensors["model.norm.weight"],
            "lm_head.weight": tensors.get("lm_head.weight", embed),  # tied embeddings
        }
        return load_into(head, state, "the client head")
