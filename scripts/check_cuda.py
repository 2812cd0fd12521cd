"""GPU check of a node's own serving path on the real model (SmolLM2-135M-Instruct by default).

scripts/bench_quantization.py measures quantization's quality with transformers driving the
blocks; this drives them as a node does: ``load_blocks`` (quantizing each block as it moves to
the device), ``BlockBackend.forward`` / ``forward_batch`` over ``SessionCache`` s, one session
stepped token by token as a client steps it. For each dtype and format it prints:

- tokens equal: greedy generation through the node path (client head on the same device and
  dtype) against transformers' own ``generate`` with the same (quantized) blocks on the same
  device, position of the first difference if any;
- batched vs alone: 4 sessions' decoding steps as one ``forward_batch`` against each step run
  alone, largest relative difference and whether every session's tokens stayed equal (a
  format a node never batches, int8, is marked and not counted as a failure);
- device memory held by the loaded blocks, and the estimate the capacity formula uses;
- ms per decoding step through all blocks (1 row; 8 rows batched) and for a 128-token prompt,
  CUDA-synchronised medians;
- the node's own profile (``BlockBackend.profile``, what it advertises): tokens/s per block.

    python scripts/check_cuda.py [--device cuda] [--tokens 48] [--model smollm2]

On a machine without a GPU, ``--device cpu`` runs the same checks (slowly, float32 only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_quantization import PROMPTS, chat_ids, load
from bench_quantization import synchronize as sync


class NodePath:
    """One span holding every block, and a client head, on one device: the node's code path."""

    def __init__(self, spec, device: str, dtype: torch.dtype, quant: str):
        from swarmnode.models import load_blocks, load_client_head
        from swarmnode.server.backend import BlockBackend

        self.spec, self.device, self.dtype = spec, torch.device(device), dtype
        before = torch.cuda.memory_allocated() if self.device.type == "cuda" else 0
        loaded = load_blocks(spec, 0, spec.num_blocks, device, dtype, quant=quant)
        sync(self.device)
        self.block_memory = (torch.cuda.memory_allocated() - before) if self.device.type == "cuda" else 0
        self.backend = BlockBackend(spec, loaded, device, dtype)
        head, _ = load_client_head(spec, dtype)
        self.head = head.to(device)
        self.kv = spec.family.kv_heads_and_dim(spec.config)
        eos = spec.config.eos_token_id
        # Forbidden, as transformers' min_new_tokens forbids it, so both generate every step.
        self.end_of_text = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def cache(self, capacity: int = 512):
        from swarmnode.server.cache import SessionCache

        return SessionCache(0, self.spec.num_blocks, 1, capacity, *self.kv, self.dtype, self.device)

    def step(self, ids: torch.Tensor, past: int, cache) -> torch.Tensor:
        """Hidden states after every block for ``ids`` (new tokens) following ``past`` cached ones."""
        hidden = self.head.embed(ids.to(self.device), torch.arange(past, past + ids.shape[1], device=self.device)[None])
        return self.backend.forward(hidden, 0, self.spec.num_blocks, cache).to(self.device)

    def next_token(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head.logits(hidden.to(self.device, self.dtype))[:, -1]
        logits[:, self.end_of_text] = float("-inf")
        return logits.argmax(-1, keepdim=True).cpu()

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        cache, tokens, new = self.cache(), prompt, prompt
        for _ in range(new_tokens):
            new = self.next_token(self.step(new, tokens.shape[1] - new.shape[1], cache))
            tokens = torch.cat([tokens, new], 1)
        return tokens

    @torch.inference_mode()
    def batched(self, prompts: list[torch.Tensor], new_tokens: int) -> tuple[list[torch.Tensor], float]:
        """Each prompt alone, then every decoding step of all sessions as one forward_batch; returns
        the tokens and the largest relative difference between a batched step and the same step alone."""
        caches = [self.cache() for _ in prompts]
        tokens = [torch.cat([p, self.next_token(self.step(p, 0, c))], 1) for p, c in zip(prompts, caches, strict=True)]
        worst = 0.0
        n = self.spec.num_blocks
        for _ in range(new_tokens - 1):
            pos = [t.shape[1] - 1 for t in tokens]
            hiddens = [
                self.head.embed(t[:, -1:].to(self.device), torch.tensor([[p]], device=self.device))
                for t, p in zip(tokens, pos, strict=True)
            ]
            alone = []
            for h, c in zip(hiddens, caches, strict=True):
                alone.append(self.backend.forward(h, 0, n, c))
                c.rollback(c.length - 1)
            outs = self.backend.forward_batch(hiddens, 0, n, caches)
            worst = max(
                worst, *(float((a - o).float().norm() / a.float().norm()) for a, o in zip(alone, outs, strict=True))
            )
            tokens = [torch.cat([t, self.next_token(o)], 1) for t, o in zip(tokens, outs, strict=True)]
        return tokens, worst

    @torch.inference_mode()
    def timings(self, repeats: int = 30) -> tuple[float, float, float]:
        """Median ms: one decoding step (1 row, 100 tokens cached), 8 rows batched, a 128-token prompt."""
        n, width = self.spec.num_blocks, self.spec.hidden_size
        one = torch.randn(1, 1, width, device=self.device, dtype=self.dtype)

        def timed(work) -> float:
            work()  # warm-up
            times = []
            for _ in range(repeats):
                sync(self.device)
                began = time.perf_counter()
                work()
                sync(self.device)
                times.append(1000 * (time.perf_counter() - began))
            return statistics.median(times)

        def decode(caches):
            for c in caches:
                c.allocate()
                c.length = 100
            if len(caches) == 1:
                return lambda: (self.backend.forward(one, 0, n, caches[0]), caches[0].rollback(100))
            return lambda: (
                self.backend.forward_batch([one] * len(caches), 0, n, caches),
                [c.rollback(100) for c in caches],
            )

        prompt = torch.randn(1, 128, width, device=self.device, dtype=self.dtype)
        prompt_cache = self.cache()

        def prefill():
            self.backend.forward(prompt, 0, n, prompt_cache)
            prompt_cache.rollback(0)

        return timed(decode([self.cache()])), timed(decode([self.cache() for _ in range(8)])), timed(prefill)


def reference_generate(path: str, quant: str, device: str, dtype: torch.dtype, prompts, new_tokens: int):
    """transformers' own greedy generation of each prompt, its blocks quantized as a node does."""
    model = load(path, quant, device, dtype)
    with torch.inference_mode():  # min_new_tokens: no early stop (end-of-text forbidden, as NodePath does)
        return [
            model.generate(p.to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False).cpu()
            for p in prompts
        ]


def first_difference(a: torch.Tensor, b: torch.Tensor, start: int) -> int | None:
    differs = (a[0, start:] != b[0, start:]).nonzero()
    return None if len(differs) == 0 else int(differs[0, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=48, help="greedy steps per prompt")
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), a test model, or a path")
    parser.add_argument("--cases", nargs="+", default=None, help="dtype:quant pairs, e.g. float16:nf4")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    default = ["float32:none", "float16:none", "float16:int8", "float16:nf4"]
    cases = args.cases or (default if args.device.startswith("cuda") else ["float32:none"])

    from transformers import AutoTokenizer

    from swarmnode.models import block_bytes, load_model_spec
    from swarmnode.models.gguf import resolve_model
    from swarmnode.models.quantize import batching_allowed

    resolved = resolve_model(args.model)
    path = resolved.path
    spec = load_model_spec(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [chat_ids(tokenizer, text) for text in PROMPTS]
    if args.device.startswith("cuda"):
        from swarmnode.server.host_memory import detect_memory

        free = detect_memory(args.device) / 2**30
        name = torch.cuda.get_device_name()
        print(f"device: {name}, torch {torch.__version__}, {free:.1f} GiB usable (detect_memory)")
    print(f"{resolved.name}, {spec.num_blocks} blocks; {len(prompts)} prompts x {args.tokens} greedy steps")
    header = (
        f"{'case':>13} | {'tokens equal to transformers':>28} | {'batched vs alone':>22} | "
        f"{'block MB':>8} {'estimate':>8} | {'1 row ms':>8} {'8 rows ms':>9} {'prompt128':>9} | "
        f"{'profile tok/s/block':>19}"
    )
    print(header)
    failures = 0
    for case in cases:
        dtype_name, quant = case.split(":")
        dtype = getattr(torch, dtype_name)
        node = NodePath(spec, args.device, dtype, quant)
        equal = total = 0
        first = []
        references = reference_generate(path, quant, args.device, dtype, prompts, args.tokens)
        for prompt, theirs in zip(prompts, references, strict=True):
            ours = node.generate(prompt, args.tokens)
            n = prompt.shape[1]
            equal += int((ours[0, n:] == theirs[0, n:]).sum())
            total += args.tokens
            diff = first_difference(ours, theirs, n)
            if diff is not None:
                first.append(diff)
        alone = [node.generate(p, args.tokens // 2) for p in prompts]
        together, worst = node.batched(prompts, args.tokens // 2)
        same_batched = all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
        single, eight, prefill = node.timings()
        inference_rate, prefill_rate = node.backend.profile()
        estimate = block_bytes(spec, dtype, quant) * spec.num_blocks
        where = f" (first diff at step {min(first)})" if first else ""
        mark = "" if batching_allowed(quant) else "*"
        print(
            f"{case:>13} | {equal:4d}/{total:<4d}{where:>19} | {worst:9.1e} "
            f"{'same' if same_batched else 'DIFFERENT':>9} tokens{mark} | {node.block_memory / 1e6:8.1f} "
            f"{estimate / 1e6:8.1f} | {single:8.2f} {eight:9.2f} {prefill:9.2f} | "
            f"{inference_rate:8.0f} {prefill_rate:10.0f}",
            flush=True,
        )
        # A format whose rows interact is never batched by a node (models/quantize.py): there a
        # difference is the reason, not a failure.
        failures += int(not same_batched and batching_allowed(quant))
        del node
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if any(not batching_allowed(case.split(":")[1]) for case in cases):
        print("* nodes in this format never batch sessions (swarmnode/models/quantize.py: ROW_COUPLED_FORMATS)")
    if failures:
        raise SystemExit(f"{failures} case(s) where batched decoding changed a session's tokens")


if __name__ == "__main__":
    main()
