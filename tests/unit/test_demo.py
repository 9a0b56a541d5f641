"""The demo prints whole sentences: a reply cut by its token budget or its deadline ends at
its last full sentence (ops/demo.py)."""

from __future__ import annotations

from rich.console import Console

from ops.demo import Sentences


def printed(pieces: list[str], reason: str) -> str:
    console = Console(record=True, width=200)
    sentences = Sentences(console)
    for piece in pieces:
        sentences(piece)
    sentences.finish(reason)
    return console.export_text()


def test_a_reply_cut_by_its_budget_ends_at_its_last_sentence() -> None:
    pieces = ["Halt", "! Who", " goes there?", " The gate is", " shut. I'm going to", " have to"]
    assert printed(pieces, "FINISH_REASON_LENGTH") == (
        "Halt! Who goes there? The gate is shut. (cut at the token budget)"
    )


def test_a_reply_that_ended_by_itself_is_printed_whole() -> None:
    assert printed(["Move along", ", stranger"], "FINISH_REASON_STOP") == "Move along, stranger"
    assert printed(['"Aye."', " Go on."], "FINISH_REASON_LENGTH") == '"Aye." Go on.'


def test_a_reply_shaped_to_its_deadline_mid_sentence_ends_at_its_last_sentence() -> None:
    pieces = ["I saw a figure", " with a mask.", " He was hiding "]
    assert printed(pieces, "FINISH_REASON_DEADLINE") == "I saw a figure with a mask. (cut at the deadline)"
