"""``swarmnode status``: what a swarm serves, who serves it, and where the gaps are."""

from __future__ import annotations

import io
import shutil

from rich import box
from rich.console import Console
from rich.table import Table

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.records import SwarmSnapshot, block_runs


def coverage_gaps(snapshot: SwarmSnapshot) -> list[list[int]]:
    """Maximal [start, end) ranges of blocks that no ONLINE node serves."""
    return [list(run) for run in block_runs(snapshot.uncovered())]


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
                "state": snapshot.state_name(r),
                "start": r.start,
                "end": r.end,
                "inference_rps": round(r.inference_rps, 1),
                "cache_tokens_left": r.cache_tokens_left,
                "active_sessions": r.active_sessions,
                "busy": round(r.busy, 3) if r.busy >= 0 else None,
                "slowdown": round(r.slowdown, 2) if r.slowdown >= 1 else None,
                "dtype": r.dtype,
                "quantization": r.quantization,
                "layout": r.layout,
                "version": r.version,
                "public_name": r.public_name,
                "metrics_addr": r.metrics_addr,
                "relay": r.relay,
            }
            for r in nodes
        ],
        "coverage": [len(snapshot.serving(b)) for b in range(snapshot.num_blocks)],
        "gaps": coverage_gaps(snapshot),
    }


def swarm_status(initial_peers: list[str], model_id: str | None = None, swarm_key_path: str = "") -> dict:
    """Read the swarm's model and node records into a JSON-friendly report."""
    overrides = {"initial_peers": tuple(initial_peers), "swarm_key_path": swarm_key_path or None}
    connection = SwarmConnection(load_config(ClientConfig, overrides))
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


def format_status(report: dict, width: int | None = None) -> str:
    """A human-readable rendering of :func:`swarm_status`'s report: per model a summary line,
    the replicas of every block, and a table of its nodes."""
    if not report["models"]:
        return "no models are served in this swarm yet"
    console = Console(width=width or max(120, shutil.get_terminal_size((200, 24)).columns), no_color=True,
                      highlight=False, record=True, file=io.StringIO())  # fmt: skip
    for model in report["models"]:
        if "error" in model:
            console.print(f"model {model['model_id']}: {model['error']}")
            continue
        gaps = ", ".join(f"{s}:{e}" for s, e in model["gaps"]) or "none"
        covered = sum(1 for c in model["coverage"] if c > 0)
        console.print(
            f"model {model['model_id']} ({model['family']}, {model['num_blocks']} blocks): "
            f"{covered}/{model['num_blocks']} blocks served, gaps: {gaps}"
        )
        console.print("replicas per block: " + " ".join(str(c) for c in model["coverage"]))
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name, justify in _COLUMNS:
            table.add_column(name, justify=justify, no_wrap=True)
        for n in model["nodes"]:
            busy = "-" if n["busy"] is None else f"{n['busy']:.0%}"
            table.add_row(
                n["peer_id"], n["public_name"] or "-", n["state"], f"{n['start']}:{n['end']}",
                f"{n['inference_rps']:.0f}", str(n["active_sessions"]), busy, str(n["cache_tokens_left"]),
                n["dtype"], n.get("quantization", "none"), n.get("layout", "dense"), n["version"] or "-",
                n["metrics_addr"] or "-",
                f"via {n['relay'][-8:]}" if n.get("relay") else "direct",
            )  # fmt: skip
        console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().strip("\n").splitlines())


_COLUMNS = (
    ("PEER ID", "left"), ("NAME", "left"), ("STATE", "left"), ("BLOCKS", "right"), ("TOK/S/BLOCK", "right"),
    ("SESSIONS", "right"), ("BUSY", "right"), ("CACHE LEFT", "right"), ("DTYPE", "left"), ("QUANT", "left"),
    ("LAYOUT", "left"), ("VERSION", "left"),
    ("METRICS", "left"), ("REACHED", "left"),
)  # fmt: skip
