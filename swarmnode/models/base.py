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
    """Per-step inputs shared by all blocks of a span: positions and the attention masks.

    ``masks`` maps a block's sliding window (None: full attention) to its bool mask
    [batch or 1, 1, q, past + q] (True = attend), or to None for the plain causal case.
    """

    position_ids: torch.Tensor  # [1 or batch, q]
    masks: dict[int | None, torch.Tensor | None]
    extra: dict  # family-specific keyword arguments (e.g. rotary position embeddings)


def causal_mask(
    q_len: int, past_len: int, window: int | None, device: torch.device, key_mask: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Bool mask (True = attend) for q new tokens after past_len cached ones.

    ``key_mask`` [batch, past + q] marks the real tokens (False: padding); padded keys are
    never attended to. Returns None where scaled-dot-product attention's own causal
    handling is exact (no padding, and a prefill from an empty cache or one new token), as
    transformers itself does, so the numerics match local generation.
    """
    total = past_len + q_len
    if key_mask is not None and bool(key_mask[:, :total].all()):
        key_mask = None  # no padding: the same as no mask at all (transformers skips it too)
    if key_mask is None and (window is None or total <= window):
        if past_len == 0 or q_len == 1:
            return None
    rows = torch.arange(past_len, total, device=device)[:, None]
    cols = torch.arange(total, device=device)[None, :]
    mask = cols <= rows
    if window is not None:
        mask &= cols > rows - window
    mask = mask[None, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :total].to(device=device, dtype=torch.bool)
    return mask


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a prompt under ``attention_mask`` [batch, seq], as transformers' generate
    computes them: the count of real tokens before each one; padding gets 0."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


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

    def forward_positions(self, attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor:
        """Position ids the model's own ``forward`` uses when none are given: consecutive
        (Llama-like); OPT overrides this (it counts real tokens under the mask)."""
        return torch.arange(seq_len)[None]

    def layer_window(self, config: PretrainedConfig, index: int) -> int | None:
        """The sliding window of block ``index``'s attention, or None for full attention."""
        return None

    def new_step_aux(self, config: PretrainedConfig) -> nn.Module | None:
        """A small module shared by a node's blocks (e.g. rotary embeddings), or None."""
        return None

    def step_context(
        self,
        config: PretrainedConfig,
        aux: nn.Module | None,
        hidden: torch.Tensor,
        past_len: int,
        windows: frozenset[int | None] = frozenset({None}),
        key_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> StepContext:
        """Masks for every window in ``windows`` and the positions of the new tokens
        (default: consecutive after ``past_len``)."""
        q_len = hidden.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + q_len, device=hidden.device)[None]
        masks = {w: causal_mask(q_len, past_len, w, hidden.device, key_mask) for w in windows}
        return StepContext(position_ids, masks, self.extra_block_kwargs(aux, hidden, position_ids))

    def extra_block_kwargs(self, aux: nn.Module | None, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict:
        return {}

    def run_block(
        self, block: nn.Module, hidden: torch.Tensor, ctx: StepContext, cache, window: int | None = None
    ) -> torch.Tensor:
        out = block(
            hidden,
            attention_mask=ctx.masks[window],
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


def missing_tensors(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Names of ``module``'s parameters and persistent buffers that ``state`` lacks."""
    return [name for name in module.state_dict(keep_vars=True) if name not in state]


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Assign ``state`` to a meta-device module.

    Tensors the module does not have are ignored, as transformers ignores them (older
    Llama conversions store ``rotary_emb.inv_freq`` buffers, for example); a missing tensor
    or a wrong shape is a ModelLoadError naming every offending tensor.
    """
    from swarmnode.errors import ModelLoadError

    missing = missing_tensors(module, state)
    if missing:
        raise ModelLoadError(f"cannot load {what}: the checkpoint lacks {', '.join(missing)}")
    expected = module.state_dict(keep_vars=True)
    wrong = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(t.shape)})"
        for name, t in expected.items()
        if tuple(state[name].shape) != tuple(t.shape)
    ]
    if wrong:
        raise ModelLoadError(f"cannot load {what}: wrong shapes: {', '.join(wrong)}")
    module.load_state_dict({name: state[name] for name in expected}, strict=True, assign=True)
    return module
