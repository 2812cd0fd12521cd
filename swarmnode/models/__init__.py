"""Model-family adapters and partial checkpoint loading.

``load_model_spec`` opens a checkpoint (local folder or hub name) and picks the
family adapter from its config; ``load_blocks`` / ``load_client_head`` then read only
the tensors they need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from swarmnode.errors import ModelLoadError
from swarmnode.models.base import (
    DTYPES,
    ClientHead,
    ModelFamily,
    StepContext,
    dtype_name,
    load_into,
    missing_tensors,
)
from swarmnode.models.checkpoint import Checkpoint, open_checkpoint
from swarmnode.models.gguf import resolve_model
from swarmnode.models.layout import check_layout, pack_block
from swarmnode.models.llama import LlamaFamily
from swarmnode.models.opt import OPTFamily
from swarmnode.models.quantize import estimated_block_bytes, quantize_block

FAMILIES: tuple[ModelFamily, ...] = (LlamaFamily(), OPTFamily())

__all__ = [
    "DTYPES",
    "ClientHead",
    "LoadedBlocks",
    "ModelFamily",
    "ModelSpec",
    "StepContext",
    "dtype_name",
    "family_for",
    "load_blocks",
    "load_client_head",
    "load_model_spec",
    "load_tokenizer",
]


def family_for(config: PretrainedConfig) -> ModelFamily:
    """The adapter for ``config.model_type``; ModelLoadError when unsupported."""
    for family in FAMILIES:
        if config.model_type in family.model_types:
            return family
    supported = sorted(t for f in FAMILIES for t in f.model_types)
    raise ModelLoadError(f"unsupported model type {config.model_type!r}; supported: {supported}")


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint with its config and family: everything but the weights."""

    checkpoint: Checkpoint
    config: PretrainedConfig
    family: ModelFamily
    name: str = ""  # what the model id derives from: the user's name, a GGUF file's stem

    @property
    def path(self) -> str:
        """The checkpoint folder (or hub name) to read from: after a GGUF import, the converted folder."""
        return self.checkpoint.source

    @property
    def num_blocks(self) -> int:
        return self.family.num_blocks(self.config)

    @property
    def hidden_size(self) -> int:
        return self.family.hidden_size(self.config)


def load_model_spec(source: str) -> ModelSpec:
    """Open ``source`` and read its config; no weights are read.

    ``source`` is a checkpoint folder, a hub name, a GGUF file (converted once, cached) or a
    built-in model name (``smollm2``).
    """
    resolved = resolve_model(source)
    checkpoint = open_checkpoint(resolved.path)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read the config of {source}: {e}") from e
    config._attn_implementation = "sdpa"  # what transformers uses by default on CPU and GPU
    return ModelSpec(checkpoint, config, family_for(config), resolved.name)


@dataclass
class LoadedBlocks:
    """A node's span of blocks with the shared per-step helper module."""

    start: int
    end: int
    blocks: nn.ModuleList
    aux: nn.Module | None
    loaded_parameters: int  # number of parameters read from the checkpoint


def load_blocks(
    spec: ModelSpec,
    start: int,
    end: int,
    device: str,
    dtype: torch.dtype,
    on_block: Callable[[int, int], None] | None = None,
    quant: str = "none",
    layout: str = "dense",
) -> LoadedBlocks:
    """Build blocks [start, end) reading only their tensors from the checkpoint; ``on_block(done,
    total)`` is called after each block (progress). ``quant`` (int8, nf4) quantizes each
    block's Linear layers as it is moved to ``device`` (:mod:`swarmnode.models.quantize`);
    ``layout`` ``packed`` stores them in oneDNN's layout (:mod:`swarmnode.models.layout`; the
    caller resolves ``auto`` first).

    Every tensor the span needs is checked before any is read, so one ModelLoadError names
    all that are missing; tensors the blocks do not use are ignored, as transformers does.
    """
    if not 0 <= start < end <= spec.num_blocks:
        raise ModelLoadError(f"span {start}:{end} is outside the model's 0:{spec.num_blocks} blocks")
    shells, missing = {}, []
    for index in range(start, end):
        prefix = spec.family.block_prefix(spec.config, index)
        with torch.device("meta"):
            shells[index] = spec.family.new_block(spec.config, index)
        present = {n.removeprefix(prefix): None for n in spec.checkpoint.names_with_prefix(prefix)}
        missing += [prefix + name for name in missing_tensors(shells[index], present)]
    if missing:
        shown = ", ".join(missing[:24]) + (f" and {len(missing) - 24} more" if len(missing) > 24 else "")
        raise ModelLoadError(
            f"checkpoint {spec.name or spec.path} lacks {len(missing)} tensors of blocks {start}:{end}: {shown}"
        )
    blocks, loaded = [], 0
    for index, block in shells.items():
        prefix = spec.family.block_prefix(spec.config, index)
        tensors = spec.checkpoint.load_tensors(spec.checkpoint.names_with_prefix(prefix), dtype)
        state = {name.removeprefix(prefix): t for name, t in tensors.items()}
        block = load_into(block, state, f"block {index}")
        loaded += sum(t.numel() for t in block.state_dict().values())
        block = quantize_block(block, quant, dtype).to(device).eval()
        blocks.append(pack_block(block) if check_layout(layout) == "packed" else block)
        if on_block is not None:
            on_block(len(blocks), len(shells))
    aux = spec.family.new_step_aux(spec.config)
    if aux is not None:
        aux = aux.to(device).eval()
    return LoadedBlocks(start, end, nn.ModuleList(blocks), aux, loaded)


def load_client_head(
    spec: ModelSpec, dtype: torch.dtype = torch.float32, layout: str = "dense"
) -> tuple[ClientHead, int]:
    """Build the client head (embeddings, final norm, LM head); returns it and its parameter
    count. ``layout`` ``packed`` keeps its Linear layers in oneDNN's layout (models/layout.py);
    an LM head tied to the embeddings then gets its own packed copy."""
    names = spec.family.head_tensor_names(spec.config, spec.checkpoint)
    tensors = spec.checkpoint.load_tensors(names, dtype)
    head = spec.family.new_head(spec.config, tensors).eval()
    if check_layout(layout) == "packed":
        pack_block(head)
    return head, sum(t.numel() for t in tensors.values())


def load_tokenizer(spec: ModelSpec):
    """The checkpoint's tokenizer (with its chat template, if any); ModelLoadError if it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{spec.name} has no usable tokenizer ({type(e).__name__}: {e})") from e
    if not callable(getattr(tokenizer, "decode", None)) or not callable(tokenizer):
        raise ModelLoadError(f"{spec.name} has no usable tokenizer (got {type(tokenizer).__name__})")
    return tokenizer


def block_bytes(spec: ModelSpec, dtype: torch.dtype, quant: str = "none") -> int:
    """Bytes of one block's weights in ``dtype`` and format ``quant``, computed without reading them."""
    with torch.device("meta"):
        block = spec.family.new_block(spec.config, 0)
    return estimated_block_bytes(block, quant, dtype)


def block_parameter_count(spec: ModelSpec) -> int:
    """Parameters of one block, computed without reading weights."""
    with torch.device("meta"):
        block = spec.family.new_block(spec.config, 0)
    return sum(p.numel() for p in block.parameters())
