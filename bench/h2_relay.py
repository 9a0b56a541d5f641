"""BENCHMARK REFERENCE: HTTP/2 framed natively, gRPC stack left out. The router's own
native edge (router/native/h2edge.c, nghttp2 through cffi) with no method answered in
Python: every stream is relayed frame by frame, in C, to the backend. Python on uvloop
owns the sockets and runs no request's code: what the native data plane stands on
before a router's policies.

    python -m bench.h2_relay --listen 127.0.0.1:7260 --backend 127.0.0.1:7201
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import cast

from bench import tcp_relay
from router.native.edge import CallerConnection, NativeEdge
from router.server import MeshServicer
from tiermesh.config import CallerLimits


class RelayEdge(NativeEdge):
    """The native edge relaying every stream to `backend` over TCP, one backend connection
    per caller connection (opened with its first stream)."""

    def __init__(self, backend: tuple[str, int]) -> None:
        # No stream is answered here (no native path), so no servicer is ever called.
        # The router's edge's default limits.
        super().__init__(cast(MeshServicer, None), "", 0, native_path=b"", limits=CallerLimits())
        self.backend = backend

    async def open_internal(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        await asyncio.get_running_loop().create_connection(protocol, *self.backend)


@functools.cache
def edge(backend: tuple[str, int]) -> RelayEdge:
    return RelayEdge(backend)


def accept(backend: tuple[str, int]) -> CallerConnection:
    """The protocol of an accepted client connection, relayed to its own connection to
    `backend` (what tcp_relay.Client is to the byte relay)."""
    return CallerConnection(edge(backend))


if __name__ == "__main__":
    tcp_relay.run(__doc__, accept)
