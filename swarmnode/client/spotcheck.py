"""The session side of spot-checks: recompute a hop's step on an independent replica chain
and decide who is wrong (the rules are in :mod:`swarmnode.client.verify`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from swarmnode.client.verify import agree, relative_difference
from swarmnode.errors import NodeUnavailable, NoServersForBlocks, RemoteError, VerificationFailed
from swarmnode.routing import Hop

if TYPE_CHECKING:
    from swarmnode.client.session import StepInput, _HopState

logger = logging.getLogger(__name__)


class SpotChecks:
    """Mixed into :class:`~swarmnode.client.session.InferenceSession`, whose ``remote``,
    ``_replay_chain``, ``_close``, ``_on_hop_failure``, ``_distrusted`` and ``verification`` it uses."""

    async def _verify(self, state: _HopState, out: torch.Tensor) -> None:
        """Recompute this hop's latest step on an independent replica chain; raise
        VerificationFailed when the hop is found wrong (by a tie-break when one is possible)."""
        hop = state.hop
        exclude = {hop.peer_id} | self._distrusted
        replica = self._replica(hop, exclude)
        if replica is None:
            self.verification["skipped"] += 1  # nobody else serves this span now
            return
        self.verification["checked"] += 1
        theirs = await self._recompute(replica, state.history)
        dtypes = self._dtypes([hop, *replica])
        if theirs is None or agree(out, theirs, dtypes):
            return
        self.verification["disagreed"] += 1
        evidence = f"differs from {[h.peer_id for h in replica]} by {relative_difference(out, theirs):.2e} (relative)"
        arbiter = self._replica(hop, exclude | {h.peer_id for h in replica})
        verdict = await self._recompute(arbiter, state.history) if arbiter is not None else None
        dtypes = self._dtypes([hop, *replica, *(arbiter or [])])
        if verdict is not None and agree(out, verdict, dtypes) and not agree(theirs, verdict, dtypes):
            for liar in replica:  # the replica chain was wrong, not the hop
                self._distrusted.add(liar.peer_id)
                self._on_hop_failure(liar, VerificationFailed(f"spot-check: {evidence}", liar.peer_id))
            return
        self._distrusted.add(hop.peer_id)
        raise VerificationFailed(f"spot-check of step {len(state.history)}: {evidence}", hop.peer_id)

    def _dtypes(self, hops: list[Hop]) -> tuple[str, ...]:
        """The compute dtypes the nodes announce (unknown nodes: the loosest tolerance)."""
        nodes = self.remote.last_snapshot.nodes if self.remote.last_snapshot is not None else {}
        return tuple(nodes[h.peer_id].dtype if h.peer_id in nodes else "unknown" for h in hops)

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
