"""Weight quantization of a node's blocks with bitsandbytes, on CPU and CUDA.

- ``int8``: LLM.int8 (``bnb.nn.Linear8bitLt``): each Linear weight row stored as int8 with one
  float scale; outlier input features (magnitude above 6) computed in 16/32 bit.
- ``nf4``: 4-bit NormalFloat (``bnb.nn.Linear4bit``, Petals' default on GPU): weights in blocks
  of 64 values, 4 bits per value plus one absmax per block (itself quantized to 8 bits, one
  float scale per 256 of them); computed in the node's dtype.

Only the ``nn.Linear`` layers of a block are quantized (attention and MLP projections: nearly
all of its bytes); norms and biases stay in the node's dtype. Quality is measured, not assumed:
``scripts/bench_quantization.py`` and docs/quantization.md.
"""

from __future__ import annotations

import torch
from torch import nn

from swarmnode.records import QUANT_FORMATS

FORMATS = QUANT_FORMATS
# LLM.int8 computes every input feature (column) that exceeds the outlier threshold in *any* row
# of a matmul in 16 bit, and the rest in int8: a row's result depends on the other rows, so
# decoding steps of several sessions batched together change each other's outputs (measured on
# SmolLM2 through all 30 blocks: 7.2e-2 relative on an H200 and 7.6e-2 on a CPU, enough to change
# tokens). nf4 weights are dequantized and multiplied as dense ones, rows independent (0 through 4
# test blocks; float rounding, amplified to 1e-2 over SmolLM2's 30 on a CPU, tokens unchanged).
# Nodes in these formats never merge sessions' steps (batching_allowed).
ROW_COUPLED_FORMATS = ("int8",)
NF4_BLOCK = 64  # values per absmax in bitsandbytes' 4-bit formats
NF4_NESTED = 256  # absmax values per float scale: bitsandbytes quantizes the absmax too (8 bit)


def check_format(quant: str) -> str:
    """``quant`` if it names a format, else ValueError listing them."""
    if quant not in FORMATS:
        raise ValueError(f"quantization must be one of {', '.join(FORMATS)}, got {quant!r}")
    return quant


def quantize_block(block: nn.Module, quant: str, compute_dtype: torch.dtype) -> nn.Module:
    """Replace every ``nn.Linear`` of ``block`` (on CPU, weights loaded) by its bitsandbytes
    counterpart holding the same weights; they are quantized when the block is moved to its
    device (``.to(device)``, CPU included)."""
    if check_format(quant) == "none":
        return block
    for module in list(block.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, _quantized_linear(child, quant, compute_dtype))
    return block


def batching_allowed(quant: str) -> bool:
    """Whether sessions' decoding steps may share a batched forward on blocks in format ``quant``
    without changing each other's results beyond float rounding (see ROW_COUPLED_FORMATS)."""
    return check_format(quant) not in ROW_COUPLED_FORMATS


def _quantized_linear(linear: nn.Linear, quant: str, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb  # imported only when used: it probes the machine's backends

    bias = linear.bias is not None
    weight = linear.weight.data.to(torch.float32 if quant == "int8" else compute_dtype)
    if quant == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False, threshold=6.0
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if bias:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    # A new module starts in training mode; bitsandbytes computes differently there (on CPU an
    # nf4 block's logits moved by 0.7 on the test model), so it takes the mode of the layer it
    # replaces: a block quantized after .eval() runs as nodes run it.
    return layer.train(linear.training)


def linear_and_other_parameters(block: nn.Module) -> tuple[int, int]:
    """(Values in the weights of ``nn.Linear`` layers, every other parameter value) of a block
    (a meta-device block is fine: nothing is read)."""
    linear = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in block.parameters())
    return linear, total - linear


def linear_rows(block: nn.Module) -> int:
    """Output rows of all ``nn.Linear`` layers (int8 keeps one scale per row)."""
    return sum(m.out_features for m in block.modules() if isinstance(m, nn.Linear))


def estimated_block_bytes(block: nn.Module, quant: str, dtype: torch.dtype) -> int:
    """Bytes one block's weights take in format ``quant`` (non-Linear parameters in ``dtype``),
    for the capacity formula; scripts/bench_quantization.py checks it against measured bytes."""
    value = torch.finfo(dtype).bits // 8
    linear, other = linear_and_other_parameters(block)
    if check_format(quant) == "none":
        return (linear + other) * value
    if quant == "int8":
        return linear + 4 * linear_rows(block) + other * value
    blocks = linear // NF4_BLOCK
    return linear // 2 + blocks + 4 * -(-blocks // NF4_NESTED) + other * value


def measured_block_bytes(block: nn.Module) -> int:
    """Bytes a loaded (possibly quantized) block holds: its parameters and buffers, plus the
    quantization state (scales, absmax) bitsandbytes keeps beside 4-bit weights."""
    total = sum(t.numel() * t.element_size() for t in (*block.parameters(), *block.buffers()))
    for module in block.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        for holder in (state, getattr(state, "state2", None)):
            absmax = getattr(holder, "absmax", None)
            if absmax is not None:
                total += absmax.numel() * absmax.element_size()
        scale = getattr(weight, "SCB", None)
        if scale is not None:
            total += scale.numel() * scale.element_size()
    return total
