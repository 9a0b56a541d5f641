"""The docs that the code writes (ops/docs.py) say what the code does."""

from __future__ import annotations

from ops.docs import ROUTER_DOC, render


def test_the_router_docs_stack_is_the_codes() -> None:
    text = ROUTER_DOC.read_text()
    assert render(text) == text, "docs/router.md's stack is stale: run `python -m ops.docs`"
