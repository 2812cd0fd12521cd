"""What a session sends a hop in one step, and how steps are joined (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepInput:
    """What one step sends to a hop: hidden states [batch, seq, hidden] and, for a padded
    batch, the tokens' attention mask [batch, seq] (0 = padding) and position ids."""

    hidden: torch.Tensor
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return self.hidden.shape[1]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        if self.mask is None:
            return (self.hidden,)
        return (self.hidden, self.mask, self.positions)

    def with_hidden(self, hidden: torch.Tensor) -> StepInput:
        """The same tokens, as the next hop receives them."""
        return StepInput(hidden, self.mask, self.positions)

    def head(self, tokens: int) -> StepInput:
        """The first ``tokens`` tokens of this input."""
        cut = lambda t: None if t is None else t[:, :tokens]  # noqa: E731
        return StepInput(self.hidden[:, :tokens], cut(self.mask), cut(self.positions))


def merge_steps(inputs: list[StepInput], max_tokens: int) -> list[StepInput]:
    """Consecutive steps joined into as few steps as possible of at most ``max_tokens`` tokens
    each (a step longer than that stays whole): one request computes what many did. Steps of a
    padded batch join only with padded steps (their masks and positions are concatenated)."""
    merged: list[list[StepInput]] = []
    for step in inputs:
        last = merged[-1] if merged else None
        if (
            last is not None
            and (last[0].mask is None) == (step.mask is None)
            and sum(s.tokens for s in last) + step.tokens <= max_tokens
        ):
            last.append(step)
        else:
            merged.append([step])
    return [_concat(group) for group in merged]


def _concat(group: list[StepInput]) -> StepInput:
    if len(group) == 1:
        return group[0]
    join = lambda name: torch.cat([getattr(s, name) for s in group], dim=1)  # noqa: E731
    if group[0].mask is None:
        return StepInput(join("hidden"))
    return StepInput(join("hidden"), join("mask"), join("positions"))
