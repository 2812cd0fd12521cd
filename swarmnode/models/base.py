"""The model-family adapter interface and the parts every family shares.

A family adapter knows, for one architecture, how blocks are named in a checkpoint,
how to build one block and run it against a KV cache, and how to build the
client-side head (embeddings, final norm, LM head). Everything else in SwarmBee is
family-agnostic.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from swarmnode.models.checkpoint import Checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class StepContext:
    """Per-step inputs shared by all blocks of a span: positions and the attention mask."""

    position_ids: torch.Tensor  # [1, q]
    attention_mask: torch.Tensor | None  # bool [1, 1, q, past + q] or None for the plain causal case
    extra: dict  # family-specific keyword arguments (e.g. rotary position embeddings)


def causal_mask(q_len: int, past_len: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Bool mask (True = attend) for q new tokens after past_len cached ones.

    Returns None where scaled-dot-product attention's own causal handling is exact (a
    prefill from an empty cache, or one new token), as transformers itself does, so
    the numerics match local generation.
    """
    total = past_len + q_len
    if window is None or total <= window:
        if past_len == 0 or q_len == 1:
            return None
    rows = torch.arange(past_len, total, device=device)[:, None]
    cols = torch.arange(total, device=device)[None, :]
    mask = cols <= rows
    if window is not None:
        mask &= cols > rows - window
    return mask[None, None]


class ClientHead(nn.Module, abc.ABC):
    """What a client holds: token (and position) embeddings, the final norm and the LM head."""

    @abc.abstractmethod
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [b, q] at positions [1, q] → hidden states [b, q, h]."""

    @abc.abstractmethod
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states after the last block [b, q, h] → logits [b, q, vocab]."""


class ModelFamily(abc.ABC):
    """Adapter for one architecture family (see swarmnode.models.llama / .opt)."""

    name: str
    model_types: tuple[str, ...]

    @abc.abstractmethod
    def num_blocks(self, config: PretrainedConfig) -> int: ...

    @abc.abstractmethod
    def block_prefix(self, config: PretrainedConfig, index: int) -> str:
        """Tensor name prefix of block ``index`` in the checkpoint, e.g. 'model.layers.3.'."""

    @abc.abstractmethod
    def new_block(self, config: PretrainedConfig, index: int) -> nn.Module:
        """An uninitialized block (called under the meta device)."""

    @abc.abstractmethod
    def kv_heads_and_dim(self, config: PretrainedConfig) -> tuple[int, int]:
        """(number of key/value heads, head dimension) of one block's attention."""

    def hidden_size(self, config: PretrainedConfig) -> int:
        return int(config.hidden_size)

    def sliding_window(self, config: PretrainedConfig) -> int | None:
        return None

    def new_step_aux(self, config: PretrainedConfig) -> nn.Module | None:
        """A small module shared by a node's blocks (e.g. rotary embeddings), or None."""
        return None

    def step_context(
        self, config: PretrainedConfig, aux: nn.Module | None, hidden: torch.Tensor, past_len: int
    ) -> StepContext:
        q_len = hidden.shape[1]
        position_ids = torch.arange(past_len, past_len + q_len, device=hidden.device)[None]
        mask = causal_mask(q_len, past_len, self.sliding_window(config), hidden.device)
        return StepContext(position_ids, mask, self.extra_block_kwargs(aux, hidden, position_ids))

    def extra_block_kwargs(self, aux: nn.Module | None, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict:
        return {}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, ctx: StepContext, cache) -> torch.Tensor:
        out = block(
            hidden,
            attention_mask=ctx.attention_mask,
            position_ids=ctx.position_ids,
            cache=cache,
            use_cache=cache is not None,
            **ctx.extra,
        )
        return out[0] if isinstance(out, tuple) else out

    @abc.abstractmethod
    def head_tensor_names(self, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        """Checkpoint tensors the client head needs."""

    @abc.abstractmethod
    def new_head(self, config: PretrainedConfig, tensors: dict[str, torch.Tensor]) -> ClientHead:
        """Build the client head from its tensors (as named in the checkpoint)."""


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Assign ``state`` to a meta-device module, requiring an exact key match."""
    from swarmnode.errors import ModelLoadError

    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"cannot load {what}: {e}") from e
    return module
