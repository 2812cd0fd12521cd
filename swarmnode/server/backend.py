"""Running a node's blocks: input validation and the forward pass.

All torch work of a node goes through one :class:`BlockBackend` on one compute
thread, so the event loop that serves RPCs never blocks on a matmul.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import torch

from swarmnode.errors import InvalidRequest
from swarmnode.models import LoadedBlocks, ModelSpec
from swarmnode.server.cache import SessionCache

ACCEPTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_POSITION = 1 << 20
INLINE_TOKENS = 4  # steps this small run on the event loop (see run)
INLINE_BUDGET_S = 0.15  # longer steps leave the loop: well under gossip's 0.4 s ping timeout


CORRUPTIONS = ("", "nan", "noise", "shape")


def corrupt(out: torch.Tensor, how: str) -> torch.Tensor:
    """TESTING AID only (``swarmnode join --debug-corrupt-output``): what a broken or hostile node
    might return — NaNs, small noise (plausible but wrong), or the wrong shape."""
    if how == "nan":
        out = out.clone()
        out[..., 0] = float("nan")
    elif how == "noise":
        out = out + 1e-2 * out.std() * torch.randn_like(out)
    elif how == "shape":
        out = out[..., :-1]
    return out


class BlockBackend:
    """Blocks [start, end) of one model, with validation and a dedicated compute thread."""

    def __init__(
        self,
        spec: ModelSpec,
        loaded: LoadedBlocks,
        device: str,
        dtype: torch.dtype,
        step_delay_s: float = 0.0,
        corrupt_output: str = "",
    ):
        self.spec, self.loaded = spec, loaded
        self.start, self.end = loaded.start, loaded.end
        self.device, self.dtype = torch.device(device), dtype
        self.hidden_size = spec.hidden_size
        self.step_delay_s = step_delay_s
        if corrupt_output not in CORRUPTIONS:
            raise ValueError(f"corrupt_output must be one of {sorted(CORRUPTIONS)}")
        self.corrupt_output = corrupt_output  # TESTING AID (--debug-corrupt-output): a dishonest node
        self.prefill_rps = 0.0  # tokens/s per block for prompts, once profiled (0: unknown, never inline)
        # Each block's attention window (None: full), so a step builds one mask per distinct window.
        self.window_of = {i: spec.family.layer_window(spec.config, i) for i in range(self.start, self.end)}
        self.windows = frozenset(self.window_of.values())
        # Every forward pass runs on this one thread, never on the event loop: the loop stays free for
        # gossip and RPCs, and torch keeps one OpenMP team. Two threads that both run torch ops each get a
        # team whose idle workers spin and slow the other (measured: a 40-token SmolLM2 prefill of 15
        # blocks took 45 ms on a second thread right after decode steps on the first, 37 ms on one thread).
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1,
            thread_name_prefix="swarmnode-compute",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def check_span(self, start: int, end: int) -> None:
        if not (self.start <= start < end <= self.end):
            raise InvalidRequest(f"span {start}:{end} is not within this node's blocks {self.start}:{self.end}")

    def check_hidden(self, hidden: torch.Tensor, max_tokens: int) -> None:
        """Reject anything but a [batch, seq, hidden_size] float tensor of sane size."""
        if hidden.dtype not in ACCEPTED_DTYPES:
            raise InvalidRequest(f"hidden states must be float32/bfloat16/float16, got {hidden.dtype}")
        if hidden.ndim != 3:
            raise InvalidRequest(f"hidden states must be [batch, seq, hidden], got shape {tuple(hidden.shape)}")
        batch, seq, width = hidden.shape
        if width != self.hidden_size:
            raise InvalidRequest(f"hidden size must be {self.hidden_size}, got {width}")
        if batch < 1 or seq < 1:
            raise InvalidRequest(f"empty hidden states of shape {tuple(hidden.shape)}")
        if seq > max_tokens:
            raise InvalidRequest(f"{seq} tokens exceed the limit of {max_tokens} for this request")
        if not torch.isfinite(hidden).all():
            raise InvalidRequest("hidden states contain NaN or infinity")

    def check_padding(self, mask: torch.Tensor | None, positions: torch.Tensor | None, hidden: torch.Tensor) -> None:
        """The optional attention mask [batch, seq] (0/1) and position ids [batch or 1, seq] of a step."""
        if mask is None and positions is None:
            return
        if mask is None or positions is None:
            raise InvalidRequest("an attention mask and position ids come together")
        batch, seq = hidden.shape[:2]
        if mask.shape != (batch, seq) or mask.dtype not in (torch.bool, torch.int8, torch.uint8, torch.int64):
            raise InvalidRequest(f"attention mask must be a [{batch}, {seq}] 0/1 tensor, got {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise InvalidRequest("attention mask values must be 0 or 1")
        if positions.ndim != 2 or positions.shape[1] != seq or positions.shape[0] not in (1, batch):
            raise InvalidRequest(f"position ids must be [{batch}, {seq}], got {tuple(positions.shape)}")
        if positions.dtype not in (torch.int32, torch.int64) or not bool(
            ((positions >= -1) & (positions < MAX_POSITION)).all()
        ):
            raise InvalidRequest(f"position ids must be integers in -1..{MAX_POSITION - 1} (OPT counts padding as -1)")

    async def run(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: SessionCache | None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        timing: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Run blocks [start, end); commits ``cache`` on success.

        ``mask`` (0 = padding) and ``positions`` describe the new tokens of a padded batch;
        without them the tokens are unpadded and follow the cached ones. ``timing``, if given,
        receives ``started`` / ``finished`` (perf_counter) of the compute itself.
        Decoding steps (a few tokens) and prompts expected to take at most
        ``INLINE_BUDGET_S`` (from the profiled prefill speed) run inline; longer prompts go to
        the compute thread so the event loop stays responsive while they run. Why, measured
        with tracing (scripts/bench_token_budget.py, 2 cores): sending decode steps to the
        compute thread made each tiny-llama node's compute 2.5-2.9 ms instead of 0.5-0.65 ms
        (3 hops: 14.7 instead of 3.9 ms per token); a SmolLM2 prompt step on the compute thread
        after decode steps on the loop thread pays for two OpenMP teams (first token over 1
        node: 39 ms above local on the thread, 11 ms inline).
        """
        args = (hidden, start, end, cache, mask, positions, timing)
        if not self.step_delay_s and self._runs_inline(hidden.shape[0] * hidden.shape[1], end - start):
            return self._forward(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._forward, *args)

    def _runs_inline(self, tokens: int, blocks: int) -> bool:
        if tokens <= INLINE_TOKENS:
            return True
        return self.prefill_rps > 0 and tokens * blocks / self.prefill_rps <= INLINE_BUDGET_S

    @torch.inference_mode()
    def _forward(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: SessionCache | None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        timing: dict[str, float] | None = None,
    ) -> torch.Tensor:
        started = time.perf_counter()
        if self.step_delay_s:
            time.sleep(self.step_delay_s)  # testing aid (--debug-step-delay-ms), off by default
        out_dtype = hidden.dtype
        hidden = hidden.to(self.device, self.dtype)
        past = cache.length if cache is not None else 0
        key_mask = cache.key_mask_for(mask, hidden.shape[1]) if cache is not None else mask
        if key_mask is not None:
            key_mask = key_mask.to(self.device)
        if positions is not None:
            positions = positions.to(self.device, torch.long)
        family, config = self.spec.family, self.spec.config
        ctx = family.step_context(config, self.loaded.aux, hidden, past, self.windows, key_mask, positions)
        for index in range(start, end):
            block = self.loaded.blocks[index - self.start]
            hidden = family.run_block(block, hidden, ctx, cache, self.window_of[index])
        if cache is not None:
            cache.commit(hidden.shape[1])
        out = hidden.to("cpu", out_dtype)
        if self.corrupt_output:
            out = corrupt(out, self.corrupt_output)
        if timing is not None:
            timing.update(started=started, finished=time.perf_counter())
        return out

    @torch.inference_mode()
    def profile(self, repeats: int = 5, prefill_tokens: int = 128) -> tuple[float, float]:
        """Measured (inference, prefill) throughput of one block, in tokens/s."""
        block = self.loaded.blocks[0]
        family, config = self.spec.family, self.spec.config
        kv_heads, head_dim = family.kv_heads_and_dim(config)

        def timed(tokens: int, past: int) -> float:
            cache = SessionCache(
                self.start, self.start + 1, 1, past + tokens, kv_heads, head_dim, self.dtype, self.device
            )
            cache.length = past
            hidden = torch.randn(1, tokens, self.hidden_size, device=self.device).to(self.dtype)
            window = self.window_of[self.start]
            ctx = family.step_context(config, self.loaded.aux, hidden, past, frozenset({window}))
            begin = time.perf_counter()
            family.run_block(block, hidden, ctx, cache, window)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - begin

        timed(1, 16)  # warm-up
        # The step-delay testing aid stands for a slower device, so the profile sees it as one
        # would: its share of one step per block of the span.
        slower = self.step_delay_s / max(1, self.end - self.start)
        step = sorted(timed(1, 16) for _ in range(repeats))[repeats // 2] + slower
        prefill = sorted(timed(prefill_tokens, 0) for _ in range(max(1, repeats // 2)))[0] + slower
        return 1.0 / max(step, 1e-9), prefill_tokens / max(prefill, 1e-9)
