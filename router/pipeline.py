"""The router is a stack of small policies over one backend interface.

A `Backend` turns a `Call` into a stream of responses. Tier adapters are backends;
so is every policy, which wraps the backend below it (cache → admission → tier
choice → balancer → fallback/hedge → adapter). Each can be tested alone with a
fake backend underneath.

A policy with nothing to do for a call (no session, not an intent, not a cached task,
no resuming) returns the stream below as it is: a wrapping layer costs every message a
generator step, and the first token a cold one (docs/router.md, "Data path").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from router.call import Call
from tiermesh.v1 import mesh_pb2


class Backend(Protocol):
    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        """Stream the answer; raise `StatusError` for failures the caller should see."""
        ...
