"""A node's blocks in the dense and the packed weight layout (swarmnode/models/layout.py), in one run.

For each model, the blocks of one span are loaded twice (dense, packed) and measured
alternately on the node's code path (``BlockBackend``), through the whole span as in service
(so weights stream from memory as they do there, not from a cache one block fits in): seconds
per block of a decoding step of 1, 2, 4 and 8 sessions (``forward`` alone, ``forward_batch``
batched; 16 tokens cached each) and of a prompt, with 1 and 2 torch threads. Each figure is
the better of two alternating rounds (dense, packed, dense, packed), each round a median of
``--repeats``. Printed: both layouts, the dense/packed ratio (> 1 = packed faster), and the
relative difference between the two layouts' outputs.

    python scripts/bench_weight_layout.py [--models wide-llama smollm2] [--prompt 40] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from swarmnode.models import load_blocks, load_model_spec
from swarmnode.models.gguf import SMOLLM2, converted_root, ensure_converted
from swarmnode.models.tiny import tiny_checkpoint
from swarmnode.server.backend import BlockBackend
from swarmnode.server.cache import SessionCache

ROWS = (1, 2, 4, 8)
SPANS = {"wide-llama": (0, 4), "tiny-llama": (0, 4), "smollm2": (0, 15)}


def model_path(name: str) -> str:
    if name == "smollm2":
        return str(ensure_converted(SMOLLM2.gguf_path(), cache=converted_root()))
    return str(tiny_checkpoint(name))


def span_seconds(backend: BlockBackend, work, repeats: int) -> float:
    """Median seconds per block of ``work()`` (after a warm-up)."""
    work()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return statistics.median(times) / (backend.end - backend.start)


def decoding_seconds(backend: BlockBackend, rows: int, repeats: int) -> float:
    """A decoding step of ``rows`` sessions through the span, each with 16 tokens cached."""
    kv_heads, head_dim = backend.spec.family.kv_heads_and_dim(backend.spec.config)
    start, end = backend.start, backend.end
    caches = [SessionCache(start, end, 1, 32, kv_heads, head_dim, torch.float32, "cpu") for _ in range(rows)]
    for cache in caches:
        cache.allocate()
        cache.length = 16
    hiddens = [torch.randn(1, 1, backend.hidden_size) for _ in range(rows)]

    def step():
        if rows == 1:
            backend.forward(hiddens[0], start, end, caches[0])
        else:
            backend.forward_batch(hiddens, start, end, caches)
        for cache in caches:
            cache.rollback(16)

    with torch.inference_mode():
        return span_seconds(backend, step, repeats)


def prompt_seconds(backend: BlockBackend, tokens: int, repeats: int) -> float:
    hidden = torch.randn(1, tokens, backend.hidden_size)
    with torch.inference_mode():
        return span_seconds(backend, lambda: backend.forward(hidden, backend.start, backend.end, None), repeats)


def largest_difference(dense: BlockBackend, packed: BlockBackend, tokens: int) -> float:
    hidden = torch.randn(1, tokens, dense.hidden_size)
    with torch.inference_mode():
        a = dense.forward(hidden, dense.start, dense.end, None)
        b = packed.forward(hidden, packed.start, packed.end, None)
    return float((a - b).norm() / a.norm())


def measure(name: str, prompt: int, repeats: int) -> None:
    spec = load_model_spec(model_path(name))
    start, end = SPANS.get(name, (0, min(4, spec.num_blocks)))
    backends = {
        layout: BlockBackend(
            spec, load_blocks(spec, start, end, "cpu", torch.float32, layout=layout), "cpu", torch.float32
        )
        for layout in ("dense", "packed")
    }
    print(f"\n== {name}: blocks {start}:{end}, hidden {spec.hidden_size}; ms per block, medians of {repeats} ==")
    difference = largest_difference(*backends.values(), prompt)
    print(f"   outputs of a {prompt}-token prompt, packed vs dense: {difference:.1e} relative")
    header = " ".join(f"{r} row{'s' if r > 1 else ''}".rjust(8) for r in ROWS)
    print(f"   {'threads':>7} {'layout':>8} {header} {f'prompt {prompt}':>10}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results = {layout: ([0.0] * len(ROWS), 0.0) for layout in backends}
        for _ in range(2):  # alternate the layouts twice: machine noise hits both alike
            for layout, backend in backends.items():
                rows = [decoding_seconds(backend, r, repeats) for r in ROWS]
                kept, kept_prompt = results[layout]
                best = [min(a, b) if a else b for a, b in zip(kept, rows, strict=True)]
                seconds = prompt_seconds(backend, prompt, max(3, repeats // 2))
                results[layout] = (best, min(kept_prompt, seconds) if kept_prompt else seconds)
        for layout, (rows, seconds) in results.items():
            cells = " ".join(f"{c * 1e3:8.2f}" for c in rows)
            print(f"   {threads:>7} {layout:>8} {cells} {seconds * 1e3:10.2f}")
        (dense_rows, dense_prompt), (packed_rows, packed_prompt) = results["dense"], results["packed"]
        ratios = " ".join(f"{d / p:7.2f}x" for d, p in zip(dense_rows, packed_rows, strict=True))
        print(f"   {threads:>7} {'ratio':>8} {ratios} {dense_prompt / packed_prompt:9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["wide-llama", "smollm2"])
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    for name in args.models:
        measure(name, args.prompt, args.repeats)


if __name__ == "__main__":
    main()
