"""Quantized blocks against full precision, on the real model the project ships (SmolLM2-135M-Instruct).

For ``none``, ``int8`` and ``nf4`` (swarmnode.models.quantize, the same code a node runs with
``swarmnode join --quant``): every transformer block's Linear layers are quantized, the
embeddings and LM head (which clients hold) are not. Printed per format:

- weight bytes per block, measured on the loaded block, and the capacity formula's estimate;
- top-1 agreement with fp32: the fp32 model generates greedily from a few real prompts (at
  least 256 steps in all); the quantized model reads the same text, and at every generated
  position we compare its most likely next token with the one fp32 chose;
- perplexity on a fixed English text (and fp32's, in the same run);
- time of one token through every block (no cache, no LM head), and its ratio to the
  unquantized model's measured in the same run.

On a GPU (``--device cuda``, blocks in float16 by default there) this is the CUDA check of the
same code: bitsandbytes quantizes each block as it moves to the GPU, as on a node.

    python scripts/bench_quantization.py [--steps-per-prompt 64] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Write a short poem about the sea at night.",
    "Explain in simple words how a bicycle stays upright.",
    "Give me three tips for learning a new language.",
]
TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines that riders pushed along with their feet. Pedals came "
    "later, first on the front wheel and then, with a chain, on the rear one. By the end of the "
    "century the safety bicycle, with two wheels of equal size and pneumatic tyres, had made "
    "cycling popular with millions of people. Cities built paths for cyclists, clubs organised "
    "races and tours, and the bicycle changed how people travelled to work and school. Today it "
    "remains one of the most efficient ways to move a person over short distances, using less "
    "energy per kilometre than walking."
)


def load(path: str, quant: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    from swarmnode.models.quantize import quantize_block

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    for i, layer in enumerate(model.model.layers):
        model.model.layers[i] = quantize_block(layer, quant, dtype).to(device)  # as a node places a block
    return model.to(device)


def chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    """``prompt`` as one user turn in the tokenizer's chat template (plain text if it has none)."""
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
    return tokenizer(prompt, return_tensors="pt").input_ids


@torch.inference_mode()
def agreement(model, sequences: list[tuple[torch.Tensor, int]]) -> tuple[int, int]:
    """(Positions where ``model``'s top-1 equals the token fp32 generated, positions)."""
    same = total = 0
    for ids, prompt_len in sequences:
        ids = ids.to(model.device)
        predicted = model(ids).logits[0, prompt_len - 1 : -1].argmax(-1)
        same += int((predicted == ids[0, prompt_len:]).sum())
        total += ids.shape[1] - prompt_len
    return same, total


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor) -> float:
    ids = ids.to(model.device)
    logits = model(ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).exp())


@torch.inference_mode()
def step_ms(model, repeats: int = 20) -> float:
    """Median time of one token through the embeddings and every block (no LM head, no cache:
    the Linear layers, which quantization changes, are nearly all of a decoding step)."""
    token = torch.tensor([[42]], device=model.device)
    model.model(token)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(model.device)
        began = time.perf_counter()
        model.model(token)
        synchronize(model.device)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-per-prompt", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))

    from transformers import AutoTokenizer

    from swarmnode.models import block_bytes, load_model_spec
    from swarmnode.models.gguf import SMOLLM2, ensure_converted
    from swarmnode.models.quantize import FORMATS, measured_block_bytes

    path = str(ensure_converted(SMOLLM2.gguf_path()))
    spec = load_model_spec(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = load(path, "none")  # fp32 on the CPU: the reference tokens every format is held to
    sequences = []
    for prompt in PROMPTS:
        ids = chat_ids(tokenizer, prompt)
        out = reference.generate(ids, max_new_tokens=args.steps_per_prompt, min_new_tokens=args.steps_per_prompt,
                                 do_sample=False)  # fmt: skip
        sequences.append((out, ids.shape[1]))
    text_ids = tokenizer(TEXT, return_tensors="pt").input_ids
    print(f"SmolLM2-135M-Instruct ({spec.num_blocks} blocks, hidden {spec.hidden_size}); {len(PROMPTS)} chat prompts, "
          f"{args.steps_per_prompt} greedy steps each; perplexity text {text_ids.shape[1]} tokens; "
          f"{args.threads} torch threads; blocks on {args.device} in {str(dtype).removeprefix('torch.')}")  # fmt: skip
    print(f"{'format':>6} | {'bytes/block':>11} {'estimate':>9} | {'top-1 agreement':>22} | {'perplexity':>10} | "
          f"{'ms/step':>7} {'vs fp32':>7}")  # fmt: skip
    base_ms = None
    for quant in FORMATS:
        on_cpu_fp32 = args.device == "cpu" and dtype == torch.float32
        model = reference if quant == "none" and on_cpu_fp32 else load(path, quant, args.device, dtype)
        measured = measured_block_bytes(model.model.layers[0])
        estimate = block_bytes(spec, dtype, quant)
        same, total = agreement(model, sequences)
        ms = step_ms(model)
        base_ms = base_ms or ms
        print(f"{quant:>6} | {measured:11,d} {estimate:9,d} | {same:4d}/{total:<4d} = {same / total:8.2%} | "
              f"{perplexity(model, text_ids):10.3f} | {ms:7.2f} {ms / base_ms:6.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
