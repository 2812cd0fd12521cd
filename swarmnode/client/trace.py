"""Where the time of one generation step goes, measured on the token path (opt-in).

A session with ``tracing`` on records a :class:`StepTrace` per step: the client's own work
(embedding, request building and serialization, response decoding, the LM head with logits
processing and sampling, routing bookkeeping) and, per hop, the round trip split with the
node's own report (queueing, compute, the rest of its handling). ``scripts/bench_token_budget.py``
adds these up against the latency a caller sees. Off by default; when on, it costs a few
``perf_counter`` calls per hop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class HopTrace:
    """One hop of one step, in milliseconds."""

    build_ms: float = 0.0  # metadata + tensor serialization into the request
    wait_ms: float = 0.0  # request written → response read (network, p2pd, the node)
    parse_ms: float = 0.0  # response decoding
    report_ms: float = 0.0  # telling the router what was measured
    node_ms: float = 0.0  # the node's own: request decoded → response built
    queue_ms: float = 0.0  # the node's: waiting for its compute thread
    compute_ms: float = 0.0  # the node's: the blocks

    @property
    def network_ms(self) -> float:
        """Round trip not spent inside the node's handler: transport, p2pd, framing both ways."""
        return self.wait_ms - self.node_ms

    @property
    def node_overhead_ms(self) -> float:
        """The node's handling besides queueing and compute: decoding, validation, cache bookkeeping."""
        return self.node_ms - self.queue_ms - self.compute_ms


@dataclass
class StepTrace:
    """One step through the chain (a token, or a prompt), in milliseconds."""

    tokens: int
    route_ms: float = 0.0  # choosing the chain (first step of a session only)
    open_ms: float = 0.0  # opening hop streams
    embed_ms: float = 0.0
    head_ms: float = 0.0  # final norm + LM head + logits processors + sampling
    loop_ms: float = 0.0  # the generation loop's own bookkeeping (context, session state, streamer)
    hops: list[HopTrace] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0  # perf_counter when the next token existed


def ms_since(began: float) -> float:
    return 1000 * (time.perf_counter() - began)


class ArrivalStamps:
    """A transformers streamer that only notes when each ``put`` arrives: the prompt, then
    each new token (for timing local generation the way a caller sees it)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def token_gaps(self) -> list[float]:
        """Seconds between consecutive new tokens (the prompt's step excluded)."""
        return [b - a for a, b in zip(self.times[1:], self.times[2:], strict=False)]
