"""The session side of spot-checks: recompute a hop's steps on an independent replica chain
and decide who is wrong (the rules are in :mod:`swarmnode.client.verify`).

Each checked hop keeps one *checker*: a replica chain of its span, opened at the hop's first
check with the hop's history, then kept open and fed only the steps sent since the previous
check, joined into one request (``merge_steps``: the replica computes ~1/p tokens as one
prompt-like step, whatever the session's length). Every output of the hop since the previous
check is compared with the replica's, not just the latest one. Joined steps round floats
differently from single steps (about 1e-6 relative in float32), far inside the tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from swarmnode.client.steps import StepInput, merge_steps
from swarmnode.client.verify import agree, relative_difference
from swarmnode.errors import NodeUnavailable, NoServersForBlocks, RemoteError, VerificationFailed
from swarmnode.routing import Hop

if TYPE_CHECKING:
    from swarmnode.client.session import _HopState

logger = logging.getLogger(__name__)
MERGED_TOKENS = 512  # tokens per joined request to a checker (well under a node's frame limit)


@dataclass
class Checker:
    """A replica chain kept in step with one hop: the inputs it has computed (the very objects
    of the hop's history, so a rollback that rewrote the history is noticed) and its streams."""

    states: list[_HopState]
    seen: list[StepInput] = field(default_factory=list)

    @property
    def chain(self) -> list[Hop]:
        return [s.hop for s in self.states]

    def follows(self, history: list[StepInput]) -> bool:
        """Whether ``history`` extends what this checker computed (no rollback since)."""
        return len(self.seen) <= len(history) and all(a is b for a, b in zip(self.seen, history, strict=False))


class SpotChecks:
    """Mixed into :class:`~swarmnode.client.session.InferenceSession`, whose ``remote``,
    ``_replay_chain``, ``_replay``, ``_close``, ``_on_hop_failure``, ``_distrusted`` and
    ``verification`` it uses."""

    async def _verify(self, state: _HopState) -> None:
        """Compare the hop's outputs since its last check with its checker's; raise
        VerificationFailed when the hop is found wrong (by a tie-break when one is possible)."""
        hop = state.hop
        exclude = {hop.peer_id} | self._distrusted
        theirs = await self._advance_checker(state, exclude)
        if theirs is None:
            return
        self.verification["checked"] += 1
        mine, state.unchecked = state.unchecked, {}
        dtypes = self._dtypes([hop, *state.checker.chain])
        wrong = [i for i in sorted(mine) if i in theirs and not agree(mine[i], theirs[i], dtypes)]
        if not wrong:
            return
        step, replica = wrong[0], state.checker.chain
        self.verification["disagreed"] += 1
        evidence = f"differs from {[h.peer_id for h in replica]} by {relative_difference(mine[step], theirs[step]):.2e}"
        arbiter = self._replica(hop, exclude | {h.peer_id for h in replica})
        verdict = await self._recompute(arbiter, state.history[: step + 1]) if arbiter is not None else None
        dtypes = self._dtypes([hop, *replica, *(arbiter or [])])
        if verdict is not None and agree(mine[step], verdict, dtypes) and not agree(theirs[step], verdict, dtypes):
            for liar in replica:  # the replica chain was wrong, not the hop
                self._distrusted.add(liar.peer_id)
                self._on_hop_failure(liar, VerificationFailed(f"spot-check: {evidence} (relative)", liar.peer_id))
            await self._drop_checker(state)
            return
        self._distrusted.add(hop.peer_id)
        raise VerificationFailed(f"spot-check of step {step + 1}: {evidence} (relative)", hop.peer_id)

    async def _advance_checker(self, state: _HopState, exclude: set[str]) -> dict[int, torch.Tensor] | None:
        """Bring the hop's checker up to date; the outputs it computed now, by history index
        (None: no replica, or it failed — a failure is not evidence)."""
        checker = state.checker
        if checker is not None and (not checker.follows(state.history) or exclude & {h.peer_id for h in checker.chain}):
            await self._drop_checker(state)
            checker = None
        try:
            if checker is None:
                replica = self._replica(state.hop, exclude)
                if replica is None:
                    self.verification["skipped"] += 1  # nobody else serves this span now
                    return None
                first, steps = 0, state.history
                states, outputs = await self._replay_chain(replica, merge_steps(steps, MERGED_TOKENS))
                state.checker = Checker(states)
            else:
                first, steps = len(checker.seen), state.history[len(checker.seen) :]
                outputs = merge_steps(steps, MERGED_TOKENS)
                for replica_state in checker.states:
                    outputs = await self._replay(replica_state, outputs, position=replica_state.sent_tokens)
        except (NodeUnavailable, RemoteError, TimeoutError) as e:
            logger.info("a spot-check's replica chain failed: %s", e)
            await self._drop_checker(state)
            return None
        state.checker.seen = list(state.history)
        pieces = torch.cat([out.hidden for out in outputs], dim=1).split([s.tokens for s in steps], dim=1)
        return {first + i: piece for i, piece in enumerate(pieces)}

    async def _drop_checker(self, state: _HopState) -> None:
        if state.checker is not None:
            await self._close(state.checker.states)
            state.checker = None

    def _dtypes(self, hops: list[Hop]) -> tuple[str, ...]:
        """What sets each node's tolerance: its weight format if quantized, else the compute
        dtype it announces (unknown nodes: the loosest tolerance)."""
        nodes = self.remote.last_snapshot.nodes if self.remote.last_snapshot is not None else {}
        return tuple(_precision_of(nodes[h.peer_id]) if h.peer_id in nodes else "unknown" for h in hops)

    def _replica(self, hop: Hop, exclude: set[str]) -> list[Hop] | None:
        """Another chain over ``hop``'s span, avoiding ``exclude``, without waiting (None: none)."""
        snapshot = self.remote.last_snapshot
        if snapshot is None:
            return None
        try:
            return self.remote.router.choose_chain(snapshot, hop.start, hop.end, exclude=frozenset(exclude))
        except NoServersForBlocks:
            return None

    async def _recompute(self, chain: list[Hop], history: list[StepInput]) -> torch.Tensor | None:
        """The chain's output for the last input of ``history`` (sent whole, chunk by chunk, as
        first sent); None if the chain failed (a failure, not evidence)."""
        try:
            states, outputs = await self._replay_chain(chain, history)
        except (NodeUnavailable, RemoteError, TimeoutError) as e:
            logger.info("a spot-check's replica chain failed: %s", e)
            return None
        await self._close(states)
        return outputs[-1].hidden


def _precision_of(record) -> str:
    return record.quantization if record.quantization != "none" else record.dtype
