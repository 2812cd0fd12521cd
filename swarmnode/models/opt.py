"""OPT decoders (facebook/opt-*): learned positions, LayerNorm, ReLU MLP.

Positions are embedded on the client (``embed_positions`` with its offset of 2), and
opt-350m's ``project_in``/``project_out`` live on the client too, so nodes only ever
see hidden states of ``hidden_size``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.opt.modeling_opt import OPTDecoderLayer, OPTLearnedPositionalEmbedding

from swarmnode.models.base import ClientHead, ModelFamily, load_into
from swarmnode.models.checkpoint import Checkpoint

_P = "model.decoder."


class OPTHead(ClientHead):
    def __init__(self, config: PretrainedConfig, has_final_norm: bool):
        super().__init__()
        proj_dim = config.word_embed_proj_dim
        self.embed_tokens = nn.Embedding(config.vocab_size, proj_dim)
        self.embed_positions = OPTLearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
        projected = proj_dim != config.hidden_size
        self.project_in = nn.Linear(proj_dim, config.hidden_size, bias=False) if projected else None
        self.project_out = nn.Linear(config.hidden_size, proj_dim, bias=False) if projected else None
        affine = config.layer_norm_elementwise_affine
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=affine) if has_final_norm else None
        self.lm_head = nn.Linear(proj_dim, config.vocab_size, bias=False)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        positions = position_ids.expand(input_ids.shape[0], -1)
        return hidden + self.embed_positions(None, position_ids=positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return self.lm_head(hidden)


class OPTFamily(ModelFamily):
    name = "opt"
    model_types = ("opt",)

    def num_blocks(self, config: PretrainedConfig) -> int:
        return int(config.num_hidden_layers)

    def block_prefix(self, config: PretrainedConfig, index: int) -> str:
        return f"{_P}layers.{index}."

    def new_block(self, config: PretrainedConfig, index: int) -> nn.Module:
        return OPTDecoderLayer(config, layer_idx=index)

    def forward_positions(self, attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor:
        if attention_mask is None:
            return torch.arange(seq_len)[None]
        # As OPTDecoder.forward: the running count of real tokens, minus one (padding: -1).
        return (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()

    def kv_heads_and_dim(self, config: PretrainedConfig) -> tuple[int, int]:
        heads = int(config.num_attention_heads)
        return heads, int(config.hidden_size) // heads

    def head_tensor_names(self, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        wanted = ["embed_tokens.weight", "embed_positions.weight", "project_in.weight", "project_out.weight"]
        wanted += ["final_layer_norm.weight", "final_layer_norm.bias"]
        names = [_P + n for n in wanted if _P + n in checkpoint.weight_map]
        if "lm_head.weight" in checkpoint.weight_map:
            names.append("lm_head.weight")
        return names

    def new_head(self, config: PretrainedConfig, tensors: dict[str, torch.Tensor]) -> ClientHead:
        has_final_norm = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        with torch.device("meta"):
            head = OPTHead(config, has_final_norm)
        state = {k.removeprefix(_P): v for k, v in tensors.items() if k.startswith(_P)}
        state["lm_head.weight"] = tensors.get("lm_head.weight", tensors[_P + "embed_tokens.weight"])
        return load_into(head, state, "the client head")
