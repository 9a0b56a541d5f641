"""The router is a stack of small policies over one backend interface.

A `Backend` turns a `Call` into a stream of responses. Tier adapters are backends; so is
every policy, which wraps the backend below it. Each can be tested alone with a fake
backend underneath. The stack is written as one list of `Layer`s, outermost first, each
with why it sits where it does (router/app.py); `compose` folds it.

A policy with nothing to do for a call (no session, not an intent, not a cached task,
no resuming) returns the stream below as it is: a wrapping layer costs every message a
generator step, and the first token a cold one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.call import Call
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)


class Backend(Protocol):
    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        """Stream the answer; raise `StatusError` for failures the caller should see."""
        ...


@dataclass(frozen=True)
class Layer:
    """One policy in the stack: its name, why it sits where it does, and how to build it
    over the backend below (None: not in this deployment's path, by its settings)."""

    name: str
    why: str
    build: Callable[[Backend], Backend] | None


def compose(layers: Sequence[Layer], bottom: Backend) -> Backend:
    """Fold `layers` (outermost first) over `bottom`."""
    backend = bottom
    for layer in reversed(layers):
        if layer.build is not None:
            backend = layer.build(backend)
    return backend


def describe(layers: Sequence[Layer]) -> str:
    """The layers in this deployment's path, outermost first (logged at start-up)."""
    return " → ".join(layer.name for layer in layers if layer.build is not None)
