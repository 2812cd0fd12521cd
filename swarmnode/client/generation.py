"""Generation settings decided exactly as ``transformers`` decides them.

``transformers``' ``generate`` merges the checkpoint's ``generation_config.json`` with the
caller's arguments, fills in special tokens, infers an attention mask from pad tokens,
computes position ids under padding and builds its logits processors in a fixed order.
Rather than restate those rules (and drift from them), the client borrows transformers'
own methods through :class:`_Rules`, a stand-in with just what they read (the model's
config and generation config), and runs the resulting processors on its own logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PretrainedConfig
from transformers.generation.utils import GenerationMixin

from swarmnode.models.base import generation_positions

SUPPORTED_MODES = ("greedy_search", "sample")


class _Rules(GenerationMixin):
    """The subset of a transformers model that its generation helpers consult."""

    def __init__(self, config: PretrainedConfig, generation_config: GenerationConfig):
        self.config = config
        self.generation_config = generation_config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


@dataclass
class GenerationPlan:
    """Everything one ``generate`` call decided before its first step."""

    config: GenerationConfig
    processors: Any  # transformers LogitsProcessorList
    do_sample: bool
    eos: torch.Tensor  # [n] token ids that finish a sequence (may be empty)
    pad: int  # what finished sequences emit
    max_new_tokens: int
    attention_mask: torch.Tensor | None  # of the whole context, when it has padding


def load_generation_config(folder: str | None, config: PretrainedConfig) -> GenerationConfig:
    """The checkpoint's generation_config.json, or the defaults transformers derives from its config."""
    if folder:
        try:
            return GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError):
            pass
    return GenerationConfig.from_model_config(config)


def plan_generation(
    model_config: PretrainedConfig,
    defaults: GenerationConfig,
    context: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    history_mask: torch.Tensor | None,
    history_length: int,
    options: dict[str, Any],
) -> GenerationPlan:
    """Decide a ``generate`` call: ``options`` are the caller's keyword arguments (unset ones
    come from ``defaults``), ``context`` all tokens so far (the session's history, then the
    new prompt), ``prompt_mask`` the caller's attention mask (for the new prompt or the whole
    context), ``history_mask`` the session's mask so far (None: no padding)."""
    rules = _Rules(model_config, defaults)
    config, unused = rules._prepare_generation_config(None, **options)
    if unused:
        raise TypeError(f"generate() got unexpected arguments {sorted(unused)}")
    mode = str(config.get_generation_mode().value)
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"generation mode {mode!r} is not supported through the swarm: use greedy or sampling")
    rules._prepare_special_tokens(config, kwargs_has_attention_mask=prompt_mask is not None, device="cpu")
    mask = _context_mask(rules, config, context, prompt_mask, history_mask, history_length)
    if config.max_new_tokens is not None:
        max_new_tokens = config.max_new_tokens
    else:
        max_new_tokens = max(0, config.max_length - context.shape[1])
    processors = rules._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=context.shape[1],
        encoder_input_ids=context,
        device="cpu",
        model_kwargs={"attention_mask": mask if mask is not None else torch.ones_like(context)},
    )
    eos = config._eos_token_tensor
    eos = torch.zeros(0, dtype=torch.long) if eos is None else eos.reshape(-1).long()
    pad = config._pad_token_tensor
    return GenerationPlan(
        config=config,
        processors=processors,
        do_sample=mode == "sample",
        eos=eos,
        pad=int(pad) if pad is not None else 0,
        max_new_tokens=max_new_tokens,
        attention_mask=mask if mask is not None and not bool(mask.all()) else None,
    )


def _context_mask(rules, config, context, prompt_mask, history_mask, history_length) -> torch.Tensor | None:
    """The attention mask over the whole context, as transformers would have it."""
    prompt = context[:, history_length:]
    if prompt_mask is not None:
        prompt_mask = torch.as_tensor(prompt_mask).long()
        if prompt_mask.ndim == 1:
            prompt_mask = prompt_mask[None]
        if prompt_mask.shape == context.shape and history_length:
            return prompt_mask  # the caller gave the mask of the whole context
        if prompt_mask.shape != prompt.shape:
            raise ValueError(f"attention_mask has shape {tuple(prompt_mask.shape)}, input_ids {tuple(prompt.shape)}")
    elif prompt.shape[1]:
        prompt_mask = rules._prepare_attention_mask_for_generation(prompt, config, {})
    else:
        prompt_mask = prompt.new_ones(prompt.shape)
    if history_length:
        history = history_mask if history_mask is not None else context.new_ones((context.shape[0], history_length))
        return torch.cat([history.long(), prompt_mask], dim=1)
    return prompt_mask


def prompt_positions(mask: torch.Tensor, first: int) -> torch.Tensor:
    """Position ids of the context's tokens from index ``first`` on, under ``mask``."""
    return generation_positions(mask)[:, first:]
