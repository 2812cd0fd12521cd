"""Spot-checks of untrusted nodes: the decisions, pure (the session runs them).

A session with ``verify_fraction = p > 0`` checks each hop every ⌈1/p⌉ steps: an independent
replica chain of the same span, kept in step with the hop, recomputes the steps since the
previous check (joined into one request) and every one of their outputs is compared. Honest
nodes agree within :func:`tolerance` (joined steps round differently from single ones, by
about 1e-6 in float32). When they disagree, a third chain, if there is one, breaks the tie;
without one the hop is presumed wrong (a session-level verdict only: the node is banned for
this session and the failure is reported in the shared observations, where one client's
word never bans a node for others).
"""

from __future__ import annotations

import math

import torch

# Relative differences honest nodes may show, by the dtype they compute in (hidden states
# travel in fp32 either way, so the output's dtype says nothing: the nodes' records do).
# Quantized weights (NodeRecord.quantization) differ from full precision far more: measured on
# SmolLM2 (30 blocks), a token's hidden state after every block differed from fp32's by up to
# 0.14 (int8) and 0.31 (nf4) relative (docs/quantization.md); about twice that is allowed.
_EPS = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 4e-2, "int8": 0.3, "nf4": 0.6}


def due(step: int, fraction: float) -> bool:
    """Whether step ``step`` (counting from 1) of a hop is checked: exactly ⌊step·p⌋ of the
    first ``step`` steps are, evenly spread, so detection takes at most ⌈1/p⌉ steps."""
    if fraction <= 0:
        return False
    return math.floor(step * fraction) > math.floor((step - 1) * fraction)


def tolerance(*dtypes: str | torch.dtype) -> float:
    """The relative difference honest nodes may show: the loosest of the compute dtypes involved
    (an unknown dtype counts as the loosest)."""
    names = [str(d).removeprefix("torch.") for d in dtypes] or ["float32"]
    return max(_EPS.get(name, max(_EPS.values())) for name in names)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / a.norm().clamp_min(1e-6))


def agree(a: torch.Tensor, b: torch.Tensor, dtypes: tuple[str | torch.dtype, ...] = ()) -> bool:
    """Whether two outputs of the same step match, for nodes computing in ``dtypes``."""
    return a.shape == b.shape and relative_difference(a, b) <= tolerance(*dtypes, a.dtype, b.dtype)
