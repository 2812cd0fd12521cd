"""A node's measured speed, kept on disk and refreshed by what it measures while serving.

Profiling at join (``BlockBackend.profile``, ``profile_batch_sizes``) takes seconds on a big
model and, done once on a device that happens to be busy, can be far off. So a node keeps
what it measured in a small JSON file per *profile key* — the model's config hash, its span,
the device (CPU model and thread count, or GPU name), dtype, quantization, torch version and
the step-delay testing aid — and a restart with the same key starts at once from it. While
serving, :class:`ServedSpeed` follows the time of the node's own single-session decoding
iterations (the service a lone session gets, fixed costs included); once it has enough of
them, the node advertises that instead and writes it back, so the next start begins from
what service measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from swarmnode.files import write_json_atomically

logger = logging.getLogger(__name__)

SERVED_SMOOTHING = 0.05  # weight of each new single-session iteration in the served estimate
SERVED_MIN_SAMPLES = 32  # iterations before the served estimate replaces the profile


def profile_dir() -> Path:
    """Where profiles are kept: SWARMNODE_PROFILES, else ``profiles`` beside the model cache."""
    if os.environ.get("SWARMNODE_PROFILES"):
        return Path(os.environ["SWARMNODE_PROFILES"])
    return Path(os.environ.get("SWARMNODE_CACHE", Path.home() / ".cache" / "swarmnode")) / "profiles"


def device_descriptor(device: str, threads: int) -> str:
    """What the speed of a step depends on besides the model: the processor and its threads."""
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{model}:{os.cpu_count()} cores:{threads} threads"


def profile_key(fields: Mapping[str, Any]) -> str:
    """A file-name-safe digest of everything a profile depends on."""
    text = json.dumps(dict(sorted(fields.items())), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ProfileCache:
    """Profiles by key, one JSON file each, under ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def load(self, key: str) -> dict | None:
        """The stored profile, or None (absent, unreadable or malformed: measured anew)."""
        try:
            data = json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        if not _valid(data):
            logger.warning("ignoring a malformed profile in %s", self.dir / f"{key}.json")
            return None
        return data

    def save(self, key: str, data: dict) -> None:
        """Write atomically (a reader never sees half a file); failures are logged, not raised:
        a profile not kept only costs the next start a measurement."""
        try:
            write_json_atomically(self.dir / f"{key}.json", data)
        except OSError as e:
            logger.warning("could not keep the profile: %s", e)


def _valid(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    rates = [data.get("inference_rps"), data.get("prefill_rps")]
    costs = data.get("batch_costs")
    return (
        all(isinstance(r, (int, float)) and 0 < r < 1e12 for r in rates)
        and isinstance(costs, list)
        and len(costs) >= 2
        and all(isinstance(c, (int, float)) and 0 < c < 1e6 for c in costs)
    )


class ServedSpeed:
    """Per-block seconds of the node's single-session decoding iterations, smoothed.

    Fed from the compute thread (``observe``), read from the event loop (``rps``): one float
    assignment each, safe under the GIL."""

    def __init__(self, blocks: int, smoothing: float = SERVED_SMOOTHING, min_samples: int = SERVED_MIN_SAMPLES):
        if blocks < 1:
            raise ValueError("blocks must be positive")
        self.blocks, self.smoothing, self.min_samples = blocks, smoothing, min_samples
        self.samples = 0
        self.per_block_s: float | None = None

    def observe(self, decodes: int, prompt_tokens: int, seconds: float) -> None:
        """One scheduler iteration; only those that served one decoding step and nothing else count."""
        if decodes != 1 or prompt_tokens or seconds <= 0:
            return
        per_block = seconds / self.blocks
        old = self.per_block_s
        self.per_block_s = per_block if old is None else (1 - self.smoothing) * old + self.smoothing * per_block
        self.samples += 1

    def rps(self, fallback: float) -> float:
        """Tokens/s per block to advertise: the served figure once there are enough samples."""
        if self.samples < self.min_samples or not self.per_block_s:
            return fallback
        return 1.0 / self.per_block_s
