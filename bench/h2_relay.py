"""BENCHMARK REFERENCE: HTTP/2 framed natively, gRPC stack left out. The router's native
plane's relay (router/native/caller.py over h2edge.c, nghttp2 through cffi) with no method
answered in Python: every stream is relayed frame by frame, in C, to the backend. Python on uvloop
owns the sockets and runs no request's code: what the native data plane stands on
before a router's policies.

    python -m bench.h2_relay --listen 127.0.0.1:7260 --backend 127.0.0.1:7201
"""

from __future__ import annotations

import functools

from bench import tcp_relay
from router.native.caller import CallerConnection, H2Edge, Limits


@functools.cache
def edge(backend: tuple[str, int]) -> H2Edge:
    """The native plane's HTTP/2 relay as it is: no path answered in Python, every stream
    relayed to `backend` over TCP, one backend connection per caller connection (opened
    with its first stream), with the router's edge's default limits."""
    return H2Edge(backend, Limits(max_body=(1 << 20) + 5))


def accept(backend: tuple[str, int]) -> CallerConnection:
    """The protocol of an accepted client connection, relayed to its own connection to
    `backend` (what tcp_relay.Client is to the byte relay)."""
    return CallerConnection(edge(backend))


if __name__ == "__main__":
    tcp_relay.run(__doc__, accept)
