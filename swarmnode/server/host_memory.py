"""Nodes on one host share its memory: a ledger of what each local node has claimed.

A node sizes its span from the host's free memory (psutil's "available", or the GPU's free
memory). That already excludes what running nodes hold, but not what a node that is still
loading is about to take: two nodes started together would each see all of it and together
claim twice. So each node writes its claim (weights + KV reserve of its span) into a per-host
ledger before loading, and a node sizing its span subtracts what the other live nodes have
claimed but do not hold yet. On CPU what a node holds is read from the process's resident
memory above its size when it claimed; on a GPU (where other processes' memory cannot be read
by pid) from what the node reports after loading. The whole decision — read the ledger,
measure free memory, size the span, write the claim — runs under one file lock, so two nodes
starting at once see each other. Entries of processes that are gone are ignored and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from swarmnode.files import write_json_atomically

MEMORY_RESERVE_BYTES = 1 << 30  # left free for the OS and the process itself when detecting memory


def detect_memory(device: str) -> int:
    """Free memory on ``device`` (a GPU's free memory, or the host's available RAM) less a reserve."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return max(0, free - MEMORY_RESERVE_BYTES // 2)
    return max(0, psutil.virtual_memory().available - MEMORY_RESERVE_BYTES)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """One node's entry in the host's ledger."""

    pid: int
    started: float  # the process's create time: a reused pid is not the same node
    device: str  # "cpu", "cuda:0", ...
    claimed: int  # bytes: weights + KV reserve of its span
    baseline_rss: int  # the process's resident bytes when it claimed (CPU: what it held before loading)
    held: int = 0  # bytes it reported holding on its device (GPU nodes, after loading)

    @classmethod
    def from_json(cls, raw: object) -> Claim | None:
        if not isinstance(raw, dict):
            return None
        try:
            claim = cls(
                pid=int(raw["pid"]),
                started=float(raw["started"]),
                device=str(raw["device"]),
                claimed=int(raw["claimed"]),
                baseline_rss=int(raw["baseline_rss"]),
                held=int(raw.get("held", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return claim if claim.pid > 0 and claim.claimed >= 0 and claim.baseline_rss >= 0 else None


def not_yet_held(claims: Iterable[Claim], device: str, me: int, resident: Callable[[Claim], int | None]) -> int:
    """Bytes that the other live nodes on ``device`` claimed and do not hold yet.

    ``resident(claim)``: the process's resident bytes now, or None when it is gone (or the
    pid was reused). CPU nodes hold what their resident memory grew by since they claimed;
    GPU nodes what they reported."""
    total = 0
    for claim in claims:
        if claim.pid == me or claim.device != device:
            continue
        rss = resident(claim)
        if rss is None:
            continue
        held = max(0, rss - claim.baseline_rss) if device == "cpu" else claim.held
        total += max(0, claim.claimed - held)
    return total


def default_ledger_dir() -> Path:
    """Per user and host: under the temporary directory, so a reboot clears it."""
    return Path(os.environ.get("SWARMNODE_HOST_LEDGER", Path(tempfile.gettempdir()) / f"swarmnode-{os.getuid()}"))


def process_resident(claim: Claim) -> int | None:
    """Resident bytes of the claim's process now; None if it is gone or its pid was reused."""
    try:
        proc = psutil.Process(claim.pid)
        if abs(proc.create_time() - claim.started) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.memory_info().rss
    except psutil.Error:
        return None


class HostLedger:
    """The host's ledger of node claims (a directory of one JSON file per node)."""

    def __init__(self, directory: str | os.PathLike | None = None, device: str = "cpu"):
        self.dir = Path(directory) if directory is not None else default_ledger_dir()
        self.device = "cpu" if device.startswith("cpu") else device
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mine = self.dir / f"{os.getpid()}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the host-wide lock: size a span and claim it without another node in between."""
        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def claims(self) -> list[Claim]:
        """Every readable entry; entries of processes that are gone are removed."""
        out = []
        for path in self.dir.glob("*.json"):
            try:
                claim = Claim.from_json(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            if claim is None:
                continue
            if process_resident(claim) is None:
                path.unlink(missing_ok=True)
                continue
            out.append(claim)
        return out

    def others_not_yet_held(self) -> int:
        """Bytes other live local nodes on this device claimed and do not hold yet (call locked)."""
        return not_yet_held(self.claims(), self.device, os.getpid(), process_resident)

    def claim(self, claimed: int) -> None:
        """Write (or replace) this process's claim (call locked, right after sizing the span)."""
        me = psutil.Process()
        entry = Claim(os.getpid(), me.create_time(), self.device, claimed, me.memory_info().rss)
        self._write(entry)

    def report_held(self, held: int) -> None:
        """(GPU nodes, after loading) what this node now holds on its device."""
        try:
            entry = Claim.from_json(json.loads(self._mine.read_text()))
        except (OSError, ValueError):
            return
        if entry is not None:
            self._write(Claim(**{**asdict(entry), "held": held}))

    def release(self) -> None:
        """Remove this process's claim (the node stops)."""
        self._mine.unlink(missing_ok=True)

    def _write(self, entry: Claim) -> None:
        write_json_atomically(self._mine, asdict(entry))
