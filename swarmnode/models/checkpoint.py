"""Reading Hugging Face checkpoints piece by piece.

A node must never materialize weights it does not serve. We read the safetensors
index (``model.safetensors.index.json``) to find which shard holds each tensor, then
open only those shards and read only the tensors we need (safetensors memory-maps
the file, so untouched tensors are never read). A hub name is resolved through
``huggingface_hub`` downloading only the index, the config and the shards we need.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from swarmnode.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint location: a local folder, or a hub repository fetched lazily."""

    source: str  # what the user gave: a folder or a hub name
    local_dir: Path | None  # set for a local folder
    weight_map: dict[str, str]  # tensor name → shard file name

    @property
    def tensor_names(self) -> list[str]:
        return list(self.weight_map)

    def config_dict(self) -> dict:
        return json.loads(self._fetch("config.json").read_text())

    def config_hash(self) -> str:
        raw = json.dumps(self.config_dict(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def _fetch(self, filename: str) -> Path:
        if self.local_dir is not None:
            path = self.local_dir / filename
            if not path.exists():
                raise ModelLoadError(f"{filename} not found in {self.local_dir}")
            return path
        return Path(_hub_download(self.source, filename))

    def load_tensors(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Read exactly ``names`` from their shards (optionally cast to ``dtype``)."""
        missing = [n for n in names if n not in self.weight_map]
        if missing:
            raise ModelLoadError(f"checkpoint {self.source} lacks tensors {missing[:5]}")
        by_shard: dict[str, list[str]] = defaultdict(list)
        for name in names:
            by_shard[self.weight_map[name]].append(name)
        tensors: dict[str, torch.Tensor] = {}
        for shard, shard_names in by_shard.items():
            with safe_open(str(self._fetch(shard)), framework="pt") as f:
                for name in shard_names:
                    tensor = f.get_tensor(name)
                    tensors[name] = tensor.to(dtype) if dtype is not None else tensor
        return tensors

    def names_with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.weight_map if n.startswith(prefix)]


def open_checkpoint(source: str) -> Checkpoint:
    """Open a local folder or a hub name and read its tensor index (not its tensors)."""
    if not source:
        raise ModelLoadError("no model given: pass a local checkpoint folder or a hub name")
    path = Path(source).expanduser()
    if path.is_dir():
        return Checkpoint(source, path, _read_weight_map(path))
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"{source!r} is neither a checkpoint folder nor a hub name (org/model)")
    try:
        index_path = Path(_hub_download(source, INDEX_FILE))
        weight_map = _parse_index(index_path)
    except ModelLoadError:
        weight_map = _single_file_map(Path(_hub_download(source, SINGLE_FILE)))
    return Checkpoint(source, None, weight_map)


def _read_weight_map(folder: Path) -> dict[str, str]:
    index = folder / INDEX_FILE
    if index.exists():
        return _parse_index(index)
    single = folder / SINGLE_FILE
    if single.exists():
        return _single_file_map(single)
    raise ModelLoadError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE} (only safetensors are supported)")


def _parse_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read safetensors index {index_path}: {e}") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"safetensors index {index_path} has an empty weight_map")
    return {str(k): str(v) for k, v in weight_map.items()}


def _single_file_map(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {name: path.name for name in f.keys()}


def _hub_download(repo: str, filename: str) -> str:
    """Fetch one file of a hub repository (or take it from the local HF cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo, filename, token=os.environ.get("HF_TOKEN"))
    except EntryNotFoundError as e:
        raise ModelLoadError(f"{repo} has no file {filename}") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"cannot fetch {filename} of {repo}: {e}") from e
