"""``--dtype auto``: which dtype a node computes in.

On a GPU the checkpoint's own dtype is right. On a CPU it is not so simple: float16
matmuls are emulated (slow, and float16 overflows where bfloat16 does not), and bfloat16
matmuls are fast only on CPUs with native bf16 instructions (AVX512-BF16, AMX) — on
many others they are several times slower than float32. So on a CPU a 16-bit checkpoint
is computed in bfloat16 only where a quick measurement shows bfloat16 matmuls of a
decoding step's shape (one token: what per-token latency is made of) to be clearly faster
than float32 ones; otherwise in float32 (exact, and fast). Measured on the development
machine (AVX512-BF16): one-token bf16 matmuls at 0.9x float32's speed, 128-token ones at
4x — so a decoding node stays in float32 there. The decision is a pure
function of the stored dtype and the measured speed-up; the node logs it with its reason.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

BF16_MIN_SPEEDUP = 1.15  # bf16 must beat fp32 clearly: it costs precision


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str


def choose_dtype(stored: torch.dtype, device: str, bf16_speedup: float | None = None) -> DtypeChoice:
    """The compute dtype for a checkpoint stored in ``stored`` on ``device``.

    ``bf16_speedup`` is fp32 time / bf16 time of a one-token, block-sized matmul on this
    CPU (only needed for a bfloat16 checkpoint on a CPU).
    """
    name = str(stored).removeprefix("torch.")
    if not device.startswith("cpu"):
        return DtypeChoice(stored, f"the checkpoint stores {name}; {device} computes it natively")
    if stored == torch.float32:
        return DtypeChoice(torch.float32, "the checkpoint stores float32")
    if stored == torch.bfloat16 and bf16_speedup is not None and bf16_speedup >= BF16_MIN_SPEEDUP:
        return DtypeChoice(
            torch.bfloat16, f"one-token bfloat16 matmuls are {bf16_speedup:.2f}x faster than float32 on this CPU"
        )
    if stored == torch.bfloat16:
        measured = f"{bf16_speedup:.2f}x" if bf16_speedup is not None else "not measured"
        return DtypeChoice(
            torch.float32,
            f"the checkpoint stores bfloat16, but one-token bf16 matmuls are not faster on this CPU ({measured})",
        )
    return DtypeChoice(torch.float32, f"the checkpoint stores {name}, which CPUs do not compute natively")


def measure_bf16_speedup(hidden_size: int, tokens: int = 1, repeats: int = 9) -> float:
    """fp32 time / bf16 time of a [tokens, h] x [h, 4h] matmul (an MLP's shape), median of repeats."""

    def timed(dtype: torch.dtype) -> float:
        a = torch.randn(tokens, hidden_size).to(dtype)
        b = torch.randn(hidden_size, 4 * hidden_size).to(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    with torch.inference_mode():
        return timed(torch.float32) / max(timed(torch.bfloat16), 1e-9)
