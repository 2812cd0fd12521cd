"""Running a node's blocks: input validation and the forward passes.

:class:`BlockBackend` computes; it never decides when. Every call that touches tensors
(``forward``, ``forward_batch``, ``profile``) runs on the step scheduler's one thread
(:mod:`swarmnode.server.scheduler`), so the event loop that serves RPCs and gossip never
blocks on a matmul, and torch keeps one OpenMP team.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from swarmnode.errors import InvalidRequest
from swarmnode.models import LoadedBlocks, ModelSpec
from swarmnode.models.base import StepContext
from swarmnode.server.cache import BatchedCaches, SessionCache

ACCEPTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_POSITION = 1 << 20
PROFILE_REPEATS = 30  # single-token steps timed for the advertised speed (fewer if slow)
PROFILE_BUDGET_S = 3.0


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


def decode_batch_mask(lengths: Sequence[int], window: int | None, device: torch.device) -> torch.Tensor:
    """Bool mask [batch, 1, 1, max(lengths) + 1] (True = attend) for one new token per row, row i
    holding ``lengths[i]`` cached tokens: its keys are columns 0..lengths[i] (the new one last),
    within ``window`` of the new token if the block slides."""
    own = torch.tensor(lengths, device=device)[:, None]
    cols = torch.arange(max(lengths) + 1, device=device)[None, :]
    mask = cols <= own
    if window is not None:
        mask &= cols > own - window
    return mask[:, None, None, :]


class BlockBackend:
    """Blocks [start, end) of one model: request validation and the forward passes."""

    def __init__(
        self,
        spec: ModelSpec,
        loaded: LoadedBlocks,
        device: str,
        dtype: torch.dtype,
        step_delay_s: float = 0.0,
        corrupt_output: str = "",
        block_delay_s: float = 0.0,
    ):
        self.spec, self.aux = spec, loaded.aux  # blocks are kept in self.held only, so dropping frees them
        # The announced span; while a node moves (server/node.py: rebalancing) it holds the
        # blocks of its old span too, so sessions opened there finish before they are freed.
        self.start, self.end = loaded.start, loaded.end
        self.held = {loaded.start + i: block for i, block in enumerate(loaded.blocks)}
        self.device, self.dtype = torch.device(device), dtype
        self.hidden_size = spec.hidden_size
        self.step_delay_s = step_delay_s
        # TESTING AID (--debug-block-delay-ms): a device whose every block is slower by this much,
        # as the planner models devices (per-block time), unlike the step delay (once per step).
        self.block_delay_s = block_delay_s
        if corrupt_output not in CORRUPTIONS:
            raise ValueError(f"corrupt_output must be one of {sorted(CORRUPTIONS)}")
        self.corrupt_output = corrupt_output  # TESTING AID (--debug-corrupt-output): a dishonest node
        # Each block's attention window (None: full), so a step builds one mask per distinct window.
        self.window_of = {i: spec.family.layer_window(spec.config, i) for i in range(self.start, self.end)}
        self.windows = frozenset(self.window_of.values())
        self._pad_caches: dict[tuple[int, int], list[SessionCache]] = {}  # empty rows of padded batches

    def check_span(self, start: int, end: int) -> None:
        """A new request's span must lie within the announced span."""
        if not (self.start <= start < end <= self.end):
            raise InvalidRequest(f"span {start}:{end} is not within this node's blocks {self.start}:{self.end}")

    def holds(self, start: int, end: int) -> bool:
        """Whether every block of [start, end) is loaded (announced or still held after a move)."""
        return all(index in self.held for index in range(start, end))

    def add_blocks(self, loaded: LoadedBlocks) -> None:
        """(Compute thread.) Hold ``loaded``'s blocks too, ahead of announcing a new span."""
        family, config = self.spec.family, self.spec.config
        for i, block in enumerate(loaded.blocks):
            self.held.setdefault(loaded.start + i, block)
            self.window_of[loaded.start + i] = family.layer_window(config, loaded.start + i)
        self.windows = frozenset(self.window_of.values())

    def announce_span(self, start: int, end: int) -> None:
        """(Compute thread.) Serve new requests for [start, end), whose blocks must be held."""
        assert self.holds(start, end), f"blocks {start}:{end} are not all loaded"
        self.start, self.end = start, end

    def drop_blocks_outside(self, start: int, end: int) -> int:
        """(Compute thread.) Free every held block outside [start, end); returns how many."""
        gone = [index for index in self.held if not start <= index < end]
        for index in gone:
            del self.held[index]
            del self.window_of[index]
        self.windows = frozenset(self.window_of.values())
        self._pad_caches = {span: caches for span, caches in self._pad_caches.items() if self.holds(*span)}
        return len(gone)

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

    @staticmethod
    def check_finite(hidden: torch.Tensor) -> None:
        """Reject NaN or infinite inputs (on the compute thread: it reads every value)."""
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

    @torch.inference_mode()
    def forward(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: SessionCache | None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks [start, end) over one request's tokens; commits ``cache`` on success.

        ``mask`` (0 = padding) and ``positions`` describe the new tokens of a padded batch;
        without them the tokens are unpadded and follow the cached ones. The output has the
        input's dtype.
        """
        if self.step_delay_s:
            time.sleep(self.step_delay_s)  # testing aid (--debug-step-delay-ms), off by default
        out_dtype = hidden.dtype
        hidden = hidden.to(self.device, self.dtype)
        if cache is not None:
            cache.allocate()
        past = cache.length if cache is not None else 0
        key_mask = cache.key_mask_for(mask, hidden.shape[1]) if cache is not None else mask
        if key_mask is not None:
            key_mask = key_mask.to(self.device)
        if positions is not None:
            positions = positions.to(self.device, torch.long)
        family, config = self.spec.family, self.spec.config
        ctx = family.step_context(config, self.aux, hidden, past, self.windows, key_mask, positions)
        hidden = self._blocks(hidden, start, end, ctx, cache)
        if cache is not None:
            cache.commit(hidden.shape[1])
        return self._output(hidden, out_dtype)

    @torch.inference_mode()
    def forward_batch(
        self,
        hiddens: Sequence[torch.Tensor],
        start: int,
        end: int,
        caches: Sequence[SessionCache],
        rows: int | None = None,
    ):
        """One decoding step of several sessions (one token each, batch 1, no padding) as one
        batched forward per block; returns each session's output, in order.

        Every session keeps its own cache and position: the batch attends to a padded view of
        the caches (:class:`BatchedCaches`) under a mask that gives each row its own length
        (and window). Results equal each session's own step up to float rounding (a GEMM over
        several rows sums in another order: measured differences are about 1e-7 relative in
        float32); sessions that asked for exact results never come here.

        ``rows`` (at least the number of sessions) pads the batch with empty rows: on some CPUs
        a GEMM of 2-3 rows takes longer than one of 4 (the scheduler's padding plan, measured).
        Rows are independent, so padding changes the sessions' results by rounding at most.
        """
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        for cache in caches:
            cache.allocate()
        dtypes = [h.dtype for h in hiddens]
        pad = max(0, (rows or 0) - len(hiddens))
        hidden = torch.cat([h.to(self.device, self.dtype) for h in hiddens])
        if pad:
            hidden = torch.cat([hidden, hidden.new_zeros(pad, *hidden.shape[1:])])
        every = [*caches, *self._padding_caches(pad, start, end)]
        lengths = [c.length for c in every]
        positions = torch.tensor(lengths, device=self.device)[:, None]
        masks = {w: decode_batch_mask(lengths, w, self.device) for w in self.windows}
        family = self.spec.family
        ctx = StepContext(positions, masks, family.extra_block_kwargs(self.aux, hidden, positions))
        hidden = self._blocks(hidden, start, end, ctx, BatchedCaches(every))
        for cache in caches:  # padding rows never commit: their caches stay empty for the next use
            cache.commit(1)
        return [self._output(hidden[i : i + 1], dtype) for i, dtype in enumerate(dtypes)]

    def _padding_caches(self, count: int, start: int, end: int) -> list[SessionCache]:
        """``count`` empty one-token caches over [start, end), kept for reuse (compute thread only)."""
        kept = self._pad_caches.setdefault((start, end), [])
        while len(kept) < count:
            kept.append(self._scratch_cache(1, start=start, end=end))
        return kept[:count]

    def _blocks(self, hidden: torch.Tensor, start: int, end: int, ctx: StepContext, cache) -> torch.Tensor:
        family = self.spec.family
        for index in range(start, end):
            if self.block_delay_s:
                time.sleep(self.block_delay_s)
            block = self.held[index]
            hidden = family.run_block(block, hidden, ctx, cache, self.window_of[index])
        return hidden

    def _output(self, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = hidden.to("cpu", dtype)
        if self.corrupt_output:
            out = corrupt(out, self.corrupt_output)
        return out

    @torch.inference_mode()
    def profile(
        self, prefill_tokens: int = 128, threads_for: Callable[[int], None] | None = None
    ) -> tuple[float, float]:
        """Measured (inference, prefill) throughput per block, in tokens/s, from steps through the
        whole span as a session's run (``forward`` with a cache, fixed costs and the step-delay
        testing aid included): after a warm-up, the median of up to PROFILE_REPEATS single-token
        steps (fewer where a step is slow: about PROFILE_BUDGET_S in all), and the best of three
        prompts. ``threads_for(rows)``, if given, sets the intra-op threads as the scheduler would."""
        blocks = self.end - self.start
        first = self._timed_span(1, 16, threads_for)  # warm-up, and the step's rough cost
        repeats = max(5, min(PROFILE_REPEATS, int(PROFILE_BUDGET_S / max(first, 1e-6))))
        step = sorted(self._timed_span(1, 16, threads_for) for _ in range(repeats))[repeats // 2] / blocks
        prefill = min(self._timed_span(prefill_tokens, 0, threads_for) for _ in range(3)) / blocks
        return 1.0 / max(step, 1e-9), prefill_tokens / max(prefill, 1e-9)

    def _timed_span(self, tokens: int, past: int, threads_for: Callable[[int], None] | None) -> float:
        if threads_for is not None:
            threads_for(tokens)
        cache = self._scratch_cache(past + tokens, past, end=self.end)
        hidden = torch.randn(1, tokens, self.hidden_size, device=self.device).to(self.dtype)
        return self._time(lambda: self.forward(hidden, self.start, self.end, cache))

    @torch.inference_mode()
    def profile_batch_sizes(
        self, max_rows: int = 16, repeats: int = 5, threads_for: Callable[[int], None] | None = None
    ) -> list[float]:
        """Seconds per block of a decoding step of 1, 2, ..., ``max_rows`` sessions (each 16
        tokens in; one session runs alone, more batched): what admission control projects step
        times from and what the scheduler's padding plan is chosen from."""
        slower = self._slower_per_block()
        single = self._median(lambda: self._timed_block(1, 16, threads_for), repeats)
        batched = [
            self._median(lambda rows=rows: self._timed_batch(rows, 16, threads_for), repeats)
            for rows in range(2, max_rows + 1)
        ]
        return [seconds + slower for seconds in (single, *batched)]

    def _slower_per_block(self) -> float:
        # The delay testing aids stand for a slower device, so profiles see them as one would:
        # the step delay's share of one step per block of the span, and the block delay.
        return self.step_delay_s / max(1, self.end - self.start) + self.block_delay_s

    @staticmethod
    def _median(measure: Callable[[], float], repeats: int) -> float:
        measure()  # warm-up
        return sorted(measure() for _ in range(repeats))[repeats // 2]

    def _scratch_cache(
        self, capacity: int, past: int = 0, end: int | None = None, start: int | None = None
    ) -> SessionCache:
        """An allocated batch-1 cache over blocks [``start``, ``end``) (default: the span's first
        block) for ``capacity`` tokens, ``past`` of them taken: for profiles and padding rows."""
        kv_heads, head_dim = self.spec.family.kv_heads_and_dim(self.spec.config)
        start = self.start if start is None else start
        end = start + 1 if end is None else end
        cache = SessionCache(start, end, 1, capacity, kv_heads, head_dim, self.dtype, self.device)
        cache.allocate()
        cache.length = past
        return cache

    def _timed_block(self, tokens: int, past: int, threads_for: Callable[[int], None] | None) -> float:
        if threads_for is not None:
            threads_for(tokens)
        family, config = self.spec.family, self.spec.config
        cache = self._scratch_cache(past + tokens, past)
        hidden = torch.randn(1, tokens, self.hidden_size, device=self.device).to(self.dtype)
        window = self.window_of[self.start]
        ctx = family.step_context(config, self.aux, hidden, past, frozenset({window}))
        return self._time(lambda: family.run_block(self.held[self.start], hidden, ctx, cache, window))

    def _timed_batch(self, batch: int, past: int, threads_for: Callable[[int], None] | None) -> float:
        if threads_for is not None:
            threads_for(batch)
        caches = [self._scratch_cache(past + 1, past) for _ in range(batch)]
        hidden = torch.randn(batch, 1, self.hidden_size, device=self.device).to(self.dtype)
        positions = torch.full((batch, 1), past, device=self.device)
        window = self.window_of[self.start]
        family = self.spec.family
        masks = {window: decode_batch_mask([past] * batch, window, self.device)}
        ctx = StepContext(positions, masks, family.extra_block_kwargs(self.aux, hidden, positions))
        view = BatchedCaches(caches)
        return self._time(lambda: family.run_block(self.held[self.start], hidden, ctx, view, window))

    def _time(self, work: Callable[[], object]) -> float:
        begin = time.perf_counter()
        work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - begin
