"""``swarmnode status``: what a swarm serves, who serves it, and where the gaps are."""

from __future__ import annotations

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.records import NodeState, SwarmSnapshot


def coverage_gaps(snapshot: SwarmSnapshot) -> list[list[int]]:
    """Maximal [start, end) ranges of blocks that no ONLINE node serves."""
    gaps: list[list[int]] = []
    for block in snapshot.uncovered():
        if gaps and gaps[-1][1] == block:
            gaps[-1][1] = block + 1
        else:
            gaps.append([block, block + 1])
    return gaps


def snapshot_report(snapshot: SwarmSnapshot, family: str = "", repository: str = "") -> dict:
    nodes = sorted(snapshot.nodes.values(), key=lambda r: (r.start, r.end, r.peer_id))
    return {
        "model_id": snapshot.model_id,
        "num_blocks": snapshot.num_blocks,
        "family": family,
        "repository": repository,
        "nodes": [
            {
                "peer_id": r.peer_id,
                # A node that said goodbye is OFFLINE even if gossip saw it vanish and called it dead.
                "state": "DEAD" if snapshot.is_dead(r) and r.state != NodeState.OFFLINE else r.state.name,
                "start": r.start,
                "end": r.end,
                "inference_rps": round(r.inference_rps, 1),
                "cache_tokens_left": r.cache_tokens_left,
                "active_sessions": r.active_sessions,
                "busy": round(r.busy, 3) if r.busy >= 0 else None,
                "dtype": r.dtype,
                "version": r.version,
                "public_name": r.public_name,
                "metrics_addr": r.metrics_addr,
            }
            for r in nodes
        ],
        "coverage": [len(snapshot.serving(b)) for b in range(snapshot.num_blocks)],
        "gaps": coverage_gaps(snapshot),
    }


def swarm_status(initial_peers: list[str], model_id: str | None = None) -> dict:
    """Read the swarm's model and node records into a JSON-friendly report."""
    connection = SwarmConnection(load_config(ClientConfig, {"initial_peers": tuple(initial_peers)}))
    try:
        models = connection.run(connection.models(), timeout=60)
        wanted = [model_id] if model_id else sorted(models)
        reports = []
        for mid in wanted:
            record = models.get(mid)
            if record is None:
                reports.append({"model_id": mid, "error": "no such model in the swarm"})
                continue
            snapshot = connection.run(connection.snapshot(mid, record.num_blocks, max_age=0), timeout=60)
            reports.append(snapshot_report(snapshot, record.family, record.repository))
        return {"models": reports}
    finally:
        connection.close()


def format_status(report: dict) -> str:
    """A human-readable rendering of :func:`swarm_status`'s report."""
    if not report["models"]:
        return "no models are served in this swarm yet"
    lines = []
    for model in report["models"]:
        if "error" in model:
            lines.append(f"model {model['model_id']}: {model['error']}")
            continue
        gaps = ", ".join(f"{s}:{e}" for s, e in model["gaps"]) or "none"
        lines.append(f"model {model['model_id']} ({model['family']}, {model['num_blocks']} blocks) — gaps: {gaps}")
        lines.append("  coverage per block: " + " ".join(str(c) for c in model["coverage"]))
        for n in model["nodes"]:
            busy = "?" if n["busy"] is None else f"{n['busy']:.0%}"
            lines.append(
                f"  {n['peer_id']}  {n['state']:<8} blocks {n['start']}:{n['end']}  "
                f"{n['inference_rps']:.0f} tok/s/block  sessions {n['active_sessions']}  busy {busy}  "
                f"cache left {n['cache_tokens_left']}  {n['dtype']}"
            )
    return "\n".join(lines)
