"""BENCHMARK REFERENCE: the least any Python relay can do. Bytes from socket to socket on
uvloop, one backend connection per client connection, nothing parsed: what Python, the
event loop and the kernel cost per message, without HTTP/2 or gRPC. The proxy benchmark
runs it beside the gRPC relays to show where their per-message time goes.

    python -m bench.tcp_relay --listen 127.0.0.1:7210 --backend 127.0.0.1:7201
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import cast

import uvloop

CONNECTING: set[asyncio.Task[None]] = set()  # kept referenced while they run


class Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads, its peer writes."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def other(self) -> asyncio.Transport | None:
        return self.peer.transport if self.peer is not None else None

    def data_received(self, data: bytes) -> None:
        other = self.other()
        assert other is not None, "a side reads only once its peer is connected"
        other.write(data)

    # The peer reads no faster than this side can write.
    def pause_writing(self) -> None:
        if other := self.other():
            other.pause_reading()

    def resume_writing(self) -> None:
        if other := self.other():
            other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if other := self.other():
            other.close()


class Client(Side):
    """The accepted side: what it reads before its backend connection is up waits."""

    def __init__(self, backend: tuple[str, int]) -> None:
        super().__init__()
        self.backend = backend
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self.connect())
        CONNECTING.add(task)
        task.add_done_callback(CONNECTING.discard)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            super().data_received(data)

    async def connect(self) -> None:
        assert self.transport is not None
        backend = Side(peer=self)
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(lambda: backend, *self.backend)
        except OSError:
            self.transport.close()
            return
        self.peer = backend
        for data in self.early:
            transport.write(data)
        self.early.clear()


async def serve(listen: str, backend: str, client: Callable[[tuple[str, int]], asyncio.Protocol]) -> None:
    host, _, port = listen.rpartition(":")
    backend_host, _, backend_port = backend.rpartition(":")
    address = (backend_host, int(backend_port))
    server = await asyncio.get_running_loop().create_server(lambda: client(address), host, int(port))
    await server.serve_forever()


def run(description: str | None, client: Callable[[tuple[str, int]], asyncio.Protocol]) -> None:
    """A reference relay's command line; `client` makes the protocol of each accepted
    connection, given the backend's address."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.backend, client))


if __name__ == "__main__":
    run(__doc__, Client)
