"""``swarmnode chat``: an interactive terminal chat through the swarm.

One inference session holds the whole conversation: each turn renders the conversation
through the model's chat template, keeps the longest prefix the session already holds
(the nodes keep its KV cache) and sends only the rest. Answers stream as they are
generated. Ctrl-C stops the current answer and keeps the chat (a second Ctrl-C during
the same answer quits); when the conversation no longer fits the session, the chat says
so and continues in a fresh session with the most recent messages that fit. ``/reset``
starts over, ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from swarmnode.client.text import IncrementalDecoder, chat_prompt_ids, eos_token_ids
from swarmnode.errors import SwarmNodeError

HELP = "commands: /reset (forget the conversation), /quit (or Ctrl-D); Ctrl-C stops an answer"


@dataclass(frozen=True)
class SessionRenewed:
    """Yielded before an answer when the conversation no longer fit its session."""

    max_length: int
    dropped_messages: int


@dataclass
class Turn:
    """What one answer did: its text, why it ended, and whether the session was renewed first."""

    text: str = ""
    tokens: int = 0
    finish: str = "stop"  # stop (end of answer), length (max_new_tokens or session full), interrupted
    renewed_session: bool = False
    dropped_messages: int = 0


@dataclass
class Conversation:
    """A chat kept in one inference session of ``model`` (the logic of the chat CLI, testable
    without a terminal)."""

    model: object  # DistributedModelForCausalLM
    tokenizer: object
    max_length: int = 2048
    max_new_tokens: int = 512
    system: str | None = None
    options: dict = field(default_factory=dict)  # generation options (temperature, ...)
    messages: list[dict] = field(default_factory=list)
    session: object = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and start a fresh session (the nodes free the old one's caches)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.new_session()

    def new_session(self) -> None:
        """Keep the conversation, continue it in a fresh session (the old one failed or is full)."""
        if self.session is not None:
            self.session.close()
        self.session = self.model.inference_session(max_length=self.max_length)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def reply(
        self, user_text: str, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[str | SessionRenewed | Turn]:
        """Stream the answer to ``user_text``: maybe a :class:`SessionRenewed` notice, text
        deltas, then one final :class:`Turn`."""
        self.messages.append({"role": "user", "content": user_text})
        turn = Turn()
        ids = chat_prompt_ids(self.tokenizer, self.messages)
        if len(ids) + self._answer_reserve() > self.max_length:
            turn.dropped_messages = self._fit_into_fresh_session()
            turn.renewed_session = True
            yield SessionRenewed(self.max_length, turn.dropped_messages)
            ids = chat_prompt_ids(self.tokenizer, self.messages)
        new_ids = self._reuse_prefix(ids)
        budget = min(self.max_new_tokens, self.max_length - len(ids))
        if budget < 1:
            turn.finish = "length"
            yield turn
            return
        decoder = IncrementalDecoder(self.tokenizer)
        eos = eos_token_ids(self.model.generation_config, self.tokenizer)
        stream = self.model.stream_tokens(
            torch.tensor([new_ids]), session=self.session, max_new_tokens=budget, **self.options
        )
        turn.finish = "length"
        try:
            for token in stream:
                turn.tokens += 1
                if int(token[0]) in eos:
                    turn.finish = "stop"
                    break
                delta = decoder.push(int(token[0]))
                if delta:
                    yield delta
                if should_stop():
                    turn.finish = "interrupted"
                    break
        except BaseException:
            if turn.tokens == 0:
                self.messages.pop()  # no answer came: the question is not part of the conversation
            raise
        finally:
            stream.close()
        tail = decoder.finish()
        if tail:
            yield tail
        turn.text = decoder.text
        self.messages.append({"role": "assistant", "content": turn.text})
        yield turn

    def _answer_reserve(self) -> int:
        """Room an answer should have: less than this left, and the session is renewed first."""
        return min(self.max_new_tokens, max(16, self.max_length // 4))

    def _reuse_prefix(self, ids: list[int]) -> list[int]:
        """Keep what the session holds of ``ids``; the tokens still to send."""
        held = self.session.token_ids
        if held is None:
            return ids
        held = held[0].tolist()
        common = 0
        for a, b in zip(held, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one new token, so the answer has a step to start from
        if common < len(held):
            self.session.rollback(common)
        return ids[common:]

    def _fit_into_fresh_session(self) -> int:
        """Start a new session with the most recent messages that fit; returns how many were dropped."""
        system = [m for m in self.messages[:1] if m["role"] == "system"]
        rest = self.messages[len(system) :]
        dropped = 0
        reserve = self._answer_reserve()
        while len(rest) > 1 and len(chat_prompt_ids(self.tokenizer, system + rest)) + reserve > self.max_length:
            rest = rest[1:]
            dropped += 1
        self.new_session()
        self.messages = system + rest
        return dropped


class _StopOnInterrupt:
    """While an answer streams, Ctrl-C asks it to stop; a second Ctrl-C quits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopOnInterrupt:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def run_chat(conversation: Conversation, out=sys.stdout, read: Callable[[str], str] = input) -> int:
    """The interactive loop: read a line, stream the answer, until /quit or end of input."""
    out.write(f"chat with {conversation.model.remote.model_id} through the swarm; {HELP}\n")
    out.flush()
    interrupt = _StopOnInterrupt()
    try:
        while True:
            try:
                line = read(">>> ").strip()
            except EOFError:
                out.write("\n")
                return 0
            except KeyboardInterrupt:
                out.write("\n(Ctrl-D or /quit to leave)\n")
                continue
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return 0
            if line == "/reset":
                conversation.reset()
                out.write("(conversation reset: a fresh session)\n")
                continue
            if line in ("/help", "/?"):
                out.write(HELP + "\n")
                continue
            try:
                _answer(conversation, line, interrupt, out)
            except SwarmNodeError as e:  # the swarm failed for good: say so, keep the chat, use a new session
                out.write(f"\n(the swarm could not answer: {e}; the next turn uses a fresh session)\n")
                conversation.new_session()
    finally:
        conversation.close()


def _answer(conversation: Conversation, line: str, interrupt: _StopOnInterrupt, out) -> None:
    """Stream one answer to the terminal."""
    with interrupt:
        for item in conversation.reply(line, should_stop=lambda: interrupt.requested):
            if isinstance(item, SessionRenewed):
                out.write(
                    f"(the conversation no longer fits the session's {item.max_length} tokens: continuing "
                    f"in a fresh session without the {item.dropped_messages} oldest messages)\n"
                )
            elif isinstance(item, Turn):
                _report(item, conversation, out)
            else:
                out.write(item)
                out.flush()


def _report(turn: Turn, conversation: Conversation, out) -> None:
    if turn.finish == "interrupted":
        out.write(" [stopped]")
    elif turn.finish == "length":
        full = conversation.session.position + 1 >= conversation.max_length
        out.write(" [session full: /reset to start over]" if full else " [answer cut at max_new_tokens]")
    out.write("\n")
    out.flush()
