"""Text around token streams: incremental decoding, stop sequences, chat prompts.

Shared by the demo, ``swarmnode generate``, the chat CLI and the OpenAI-compatible API, so
they all turn tokens into text the same way. No networking here.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmnode.errors import ModelLoadError

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas that are safe to print.

    A token may end in the middle of a multi-byte character; its text is held back until
    the character is complete, so a stream never shows replacement characters the final
    text does not have.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # everything returned so far

    def push(self, token_id: int) -> str:
        """Add one token; returns the new printable text (possibly empty)."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete character: wait for the next token
        delta = text[len(self.text) :] if text.startswith(self.text) else text
        self.text = text
        return delta

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        delta = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text = text
        return delta


class StopSequences:
    """Finds the first stop sequence in streamed text and holds back what could begin one.

    ``feed(delta)`` returns the text that may be shown now; once a stop sequence has
    appeared, ``stopped`` is True and nothing from the stop sequence on is ever returned.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.pending += delta
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = max((_overlap(self.pending, s) for s in self.stops), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of the stream (it did not become a stop sequence)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


def eos_token_ids(generation_config, tokenizer=None) -> set[int]:
    """Token ids that end an answer: the generation config's (an id or a list), plus the
    tokenizer's own end-of-sequence token when a tokenizer is given."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if tokenizer is not None:
        ids.append(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


def chat_prompt_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` rendered through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError("this model's tokenizer has no chat template: use plain completions instead")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(ids, "keys") and "input_ids" in ids:  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]
