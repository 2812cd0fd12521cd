"""How a node stores its blocks' Linear weights on a CPU: as torch keeps them, or packed.

- ``dense``: ``nn.Linear`` as loaded; every matmul goes through torch's default CPU GEMM, which
  on each call re-reads the weight in the layout it was stored in. For one decoding step (a
  few rows) that kernel is far from the memory bandwidth the weights need, and 2-3 rows cost
  twice one row (docs/throughput.md).
- ``packed``: each weight is reordered once, at load, into oneDNN's blocked layout for
  matmuls (:class:`PackedLinear`), and every call runs oneDNN's linear on it: on this project's
  2-core CPU, a wide-llama block (hidden 1024) on one thread took 1.81 ms for one decoding step
  instead of 3.02, 2.58 ms for 8 batched sessions instead of 6.47, and 6.01 ms for a 40-token
  prompt instead of 14.61 (``scripts/bench_weight_layout.py``).
- ``auto``: packed where it applies — a CPU node, float32, no quantization, a torch build with
  oneDNN whose packed linear passes a check at load — else dense. Either way a layer smaller
  than ``PACK_MIN_WEIGHTS`` stays dense (the packed kernel's fixed cost per call loses there).

Results differ from the dense layout by float rounding only (~5e-7 relative in float32: the
sums run in another order), the way batched steps already did. Every node with the same
software and layout computes the same floats, so a failover between two packed replicas stays
bitwise; a session that fails over between a packed and a dense replica sees rounding-level
differences (as between two CPUs with different vector units). The layout is part of a
node's profile key and of what it reports about itself.

The packed weight is an opaque oneDNN tensor kept as a buffer (no gradient): fine for
inference, which is all a node serves today; training through the swarm will need the dense
layout (or a gradient of its own) for the layers it adapts.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from swarmnode.errors import ConfigError
from swarmnode.records import WEIGHT_LAYOUTS

# The smallest layer worth packing, in weight values (1 MiB in float32): oneDNN's linear costs
# ~10 us more per call than torch's, which small layers never win back. Measured through whole
# spans (scripts/bench_weight_layout.py, one decoding step, 1 thread): demo-llama (hidden 256,
# layers of 16-131k values) 0.22 ms per block packed against 0.16 dense; SmolLM2 (hidden 576,
# layers of 111-885k) 0.60 against 0.90; wide-llama (hidden 1024, 262k-4.2M) 1.81 against 3.02.
PACK_MIN_WEIGHTS = 1 << 18
_CHECK_TOLERANCE = 1e-4  # relative: float32 rounding of another summation order is ~1e-6


def check_layout(layout: str) -> str:
    """``layout`` if it names one, else ConfigError (a ValueError) listing them."""
    if layout not in WEIGHT_LAYOUTS:
        raise ConfigError(f"weight layout must be one of {', '.join(WEIGHT_LAYOUTS)}, got {layout!r}")
    return layout


def resolve_layout(layout: str, device: str, dtype: torch.dtype, quant: str) -> str:
    """The layout a node's blocks get: ``dense`` or ``packed`` (see the module docstring).
    ``packed`` asked for where it cannot apply is a ConfigError (a ValueError) saying why."""
    why_not = _why_not_packed(device, dtype, quant)
    if check_layout(layout) == "auto":
        return "dense" if why_not else "packed"
    if layout == "packed" and why_not:
        raise ConfigError(f"weight layout packed is not available here: {why_not}")
    return layout


def _why_not_packed(device: str, dtype: torch.dtype, quant: str) -> str:
    if not device.startswith("cpu"):
        return f"it is for CPU nodes (device {device})"
    if dtype != torch.float32:
        return f"it is for float32 weights (dtype {dtype})"
    if quant != "none":
        return f"quantized weights ({quant}) keep their own format"
    if not packing_works():
        return "this torch build has no working oneDNN packed linear"
    return ""


@functools.cache
def packing_works() -> bool:
    """Whether this torch build has oneDNN's packed linear and it computes what ``F.linear``
    does (checked once per process on a small random layer, with and without a bias)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return False
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(48, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 48, generator=generator))
        layer.bias.copy_(torch.randn(40, generator=generator))
    x = torch.randn(2, 3, 48, generator=generator)
    try:
        with torch.inference_mode():
            packed, bare = PackedLinear(layer), PackedLinear(nn.Linear(48, 40, bias=False))
            expected = nn.functional.linear(x, layer.weight, layer.bias)
            got = packed(x)
            bare(x)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    error = float((got - expected).norm() / expected.norm())
    return got.shape == expected.shape and error < _CHECK_TOLERANCE


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose weight lives in oneDNN's blocked layout (reordered once), computed
    with oneDNN's linear; float32 on CPU, inference only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError(f"PackedLinear takes a float32 CPU weight, got {weight.dtype} on {weight.device}")
        # None: no batch-size hint; the reorder is then good for every row count (measured).
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[-1]}")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_block(block: nn.Module, min_weights: int = PACK_MIN_WEIGHTS) -> nn.Module:
    """Replace every ``nn.Linear`` of ``block`` with at least ``min_weights`` weight values by a
    :class:`PackedLinear` holding the same weights (one layer at a time, so the block's memory
    grows by one layer's at most); smaller layers stay as they are (see PACK_MIN_WEIGHTS).

    The other tensors are then copied into memory of their own: loaded from safetensors, they
    are views of the checkpoint's memory-mapped file, and while any view lives the file stays
    mapped with every page the packing read (the whole span's weights again, measured: 1.22
    GB resident for wide-llama's 464 MB of weights instead of 0.87)."""
    for module in list(block.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.weight.numel() >= min_weights:
                setattr(module, name, PackedLinear(child))
    with torch.no_grad():
        for tensor in (*block.parameters(), *block.buffers()):
            if not tensor.is_mkldnn:
                tensor.data = tensor.data.clone()
    return block
