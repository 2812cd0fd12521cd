"""Node-to-node forwarding for inference sessions (a mixin of InferenceSession).

With ``ClientConfig(forwarding=True)``, a decoding step no longer relays every hop's output
through the client: the client sends the input to hop 1 asking it to *forward* its output to
hop 2, and sends hops 2..N an *await* request (their input comes from the hop before; each but
the last forwards in turn). A token then costs N+1 network traversals instead of 2N.

Every hop still answers the client with its output, off the critical path, so the session
keeps each hop's inputs for replay exactly as when relaying. Anything unusual falls back to
relaying for that hop, and the chain goes on forwarding after it:

- a hop that could not push (``forwarded: false`` in its answer) → the client pushes its
  output to the next hop itself (a session accepts input from its own client too);
- a hop whose input never came (``UpstreamMissing``) → the client relays the step to it;
- a hop that fails (error, closed stream, late and not alive) → the usual failover
  (``_replace``: re-route its span, replay its history), the step is relayed through the
  replacement, and its output pushed to the next hop, which is still waiting.

Forwarding is used for steps where every hop already holds the session (the first step, with
the prompt, is relayed) and not with spot-checks or tracing, which need the relayed path.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import torch

from swarmnode.errors import NodeUnavailable, RemoteError, UpstreamMissing

if TYPE_CHECKING:
    from swarmnode.client.session import _HopState
    from swarmnode.client.steps import StepInput


class Forwarding:
    """``_forwards`` / ``_forward_step`` for :class:`swarmnode.client.session.InferenceSession`."""

    def _forwards(self) -> bool:
        cfg = self.remote.config
        return (
            cfg.forwarding
            and len(self._hops) > 1
            and cfg.verify_fraction == 0
            and not self.tracing
            and all(h.stream is not None and not h.stream.closed and h.history for h in self._hops)
        )

    async def _forward_step(self, step: StepInput) -> StepInput:
        """Run one step through the chain with forwarding; returns the last hop's output."""
        hops = list(self._hops)
        wait_s = self.remote.config.request_timeout
        sends = [
            self._send(
                hops[0], self._request(hops[0], step, hops[0].sent_tokens, {"forward": self._forward_meta(hops[1])})
            )
        ]
        for i in range(1, len(hops)):
            extra = {"await": True, "input_from": hops[i - 1].hop.peer_id, "await_s": wait_s}
            if i + 1 < len(hops):
                extra["forward"] = self._forward_meta(hops[i + 1])
            sends.append(self._send(hops[i], self._request(hops[i], step, hops[i].sent_tokens, extra)))
        # All at once: an input pushed before its await arrives waits in the node's inbox. A send
        # that fails shows again as that hop's failed answer below (its stream is closed).
        await asyncio.gather(*sends, return_exceptions=True)

        pending = {id(h) for h in hops}  # hops that were sent this step and owe an answer
        index, inputs = 0, step
        while index < len(self._hops):
            state = self._hops[index]
            forwarded = False
            if id(state) in pending:
                pending.discard(id(state))
                try:
                    out, forwarded = await self._forwarded_answer(state, inputs)
                except UpstreamMissing:  # the node is fine: it never got its input
                    out = await self._relay_at(index, inputs)
                except (NodeUnavailable, RemoteError) as error:
                    self._check_refusal(error)
                    await self._replace(index, error)
                    out = await self._relay_at(index, inputs)
            else:  # a replacement hop: relayed
                out = await self._relay_at(index, inputs)
            index += 1
            following = self._hops[index] if index < len(self._hops) else None
            if following is not None and not forwarded and id(following) in pending:
                # It waits for this input from a hop that did not push it: we do.
                meta = {"session_id": following.stream_id, "step": self._step}
                await self.remote.pusher.push(following.hop.peer_id, meta, out)
            inputs = inputs.with_hidden(out)
        return inputs

    def _forward_meta(self, state: _HopState) -> dict:
        return {"peer": state.hop.peer_id, "session_id": state.stream_id, "step": self._step}

    async def _forwarded_answer(self, state: _HopState, inputs: StepInput) -> tuple[torch.Tensor, bool]:
        """A forwarded step's answer from ``state``: its output (checked like any) and whether it
        pushed that output on to the next hop."""
        from swarmnode.client.session import hop_output  # the session module imports this one

        began = time.perf_counter()
        response = await self._answer(state, self._step_timeout(state, inputs.tokens))
        meta, out = hop_output(response, state.hop.peer_id, inputs)
        self._record(state, inputs, meta, time.perf_counter() - began)
        forwarded = meta.get("forwarded") is True
        self.forwarded_hops += forwarded
        return out, forwarded
