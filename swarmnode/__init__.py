"""SwarmBee: run large language models on swarms of ordinary devices.

The public API is small: :class:`DistributedModelForCausalLM` (Hugging Face style
``from_pretrained`` / ``generate`` / ``inference_session``), the configuration classes
and the exception tree in :mod:`swarmnode.errors`.
"""

__version__ = "0.1.0"
