"""Text around token streams: incremental decoding and stop sequences (pure, no swarm)."""

import pytest

from swarmnode.client.text import IncrementalDecoder, StopSequences
from swarmnode.models.tiny import byte_level_tokenizer


def test_incremental_decoding_never_shows_half_a_character():
    tokenizer = byte_level_tokenizer()
    text = "bees 🐝 and ünïcode"
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(b) for b in text.encode()]
    assert "".join(deltas) + decoder.finish() == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[len("bees ")] == ""  # the bee's first byte alone is held back


@pytest.mark.parametrize(
    "chunks, stops, shown, stopped",
    [
        (["The capital ", "is Par", "is."], ["Paris"], "The capital is ", True),
        (["ab", "c", "d"], ["cd", "zz"], "ab", True),
        (["hello ", "wor", "ld"], ["world!"], "hello world", False),  # held back, then flushed
        (["x"], [], "x", False),
        (["stop", "more"], ["stop"], "", True),
    ],
)
def test_stop_sequences_cut_and_hold_back(chunks, stops, shown, stopped):
    stopper = StopSequences(stops)
    out = "".join(stopper.feed(c) for c in chunks) + stopper.flush()
    assert out == shown
    assert stopper.stopped is stopped


def test_text_that_might_start_a_stop_sequence_is_held_until_decided():
    stopper = StopSequences(["</end>"])
    assert stopper.feed("answer </e") == "answer "
    assert stopper.feed("nd> trailing") == ""
    assert stopper.stopped
