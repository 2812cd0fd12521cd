"""SwarmBee: run large language models on swarms of ordinary devices.

The public API is small: :class:`DistributedModelForCausalLM` (Hugging Face style
``from_pretrained`` / ``generate`` / ``inference_session``), the configuration classes
and the exception tree in :mod:`swarmnode.errors`. Names are imported lazily, so that
light entry points (the lifeline watcher, ``--help``) do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DistributedModelForCausalLM": "swarmnode.client.model",
    "InferenceSession": "swarmnode.client.session",
    "ClientConfig": "swarmnode.config",
    "NodeConfig": "swarmnode.config",
    "NoServersForBlocks": "swarmnode.errors",
    "SwarmNodeError": "swarmnode.errors",
}
__all__ = [
    "ClientConfig",
    "DistributedModelForCausalLM",
    "InferenceSession",
    "NoServersForBlocks",
    "NodeConfig",
    "SwarmNodeError",
    "__version__",
]

if TYPE_CHECKING:
    from swarmnode.client.model import DistributedModelForCausalLM
    from swarmnode.client.session import InferenceSession
    from swarmnode.config import ClientConfig, NodeConfig
    from swarmnode.errors import NoServersForBlocks, SwarmNodeError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'swarmnode' has no attribute {name!r}")
