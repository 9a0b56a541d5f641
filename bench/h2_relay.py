"""BENCHMARK REFERENCE: HTTP/2 framed natively, gRPC stack left out. nghttp2 (Debian's
libnghttp2, through cffi) frames and relays each stream in C; Python on uvloop owns the
sockets and is called once per request, where a router's policies would run.

    python -m bench.h2_relay --listen 127.0.0.1:7260 --backend 127.0.0.1:7201
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from bench import tcp_relay
from router import native

HERE = Path(__file__).parent
CDEF = """
typedef struct h2r_relay h2r_relay;
h2r_relay *h2r_new(void);
void h2r_free(h2r_relay *);
ssize_t h2r_recv(h2r_relay *, int, const uint8_t *, size_t);
const uint8_t *h2r_pending(h2r_relay *, int, size_t *);
extern "Python" int h2r_on_request(const uint8_t *, size_t);
"""


_native = native.load("h2relay", [native.COMMON, HERE / "h2_relay.c"], CDEF, ["nghttp2"])
ffi, lib = _native.ffi, _native.lib
SERVICE = b"/tiermesh.v1.Mesh/"
CONNECTING: set[asyncio.Task[None]] = set()  # kept referenced while they run


def on_request(path: Any, pathlen: int) -> int:
    """Once per request, where a router's policies would run: this one relays the Mesh
    service (0) and refuses anything else (1: the stream is reset)."""
    return 0 if ffi.buffer(path, pathlen)[:].startswith(SERVICE) else 1


ffi.def_extern(name="h2r_on_request")(on_request)


class Side(asyncio.Protocol):
    """One socket of a relayed connection; `to_client` says which."""

    def __init__(self, relay: Relay, to_client: bool) -> None:
        self.relay, self.to_client = relay, to_client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.connected(self.to_client, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.relay.received(self.to_client, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class Relay:
    """A client connection and its own backend connection, framed by one h2r_relay."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.native = lib.h2r_new()
        if self.native == ffi.NULL:
            raise MemoryError("nghttp2 sessions")
        self.pending = ffi.new("size_t *")
        self.transports: dict[bool, asyncio.Transport] = {}
        self.backend = backend

    def client(self) -> Side:
        task = asyncio.get_running_loop().create_task(self.connect())
        CONNECTING.add(task)
        task.add_done_callback(CONNECTING.discard)
        return Side(self, to_client=True)

    async def connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: Side(self, False), *self.backend)
        except OSError:
            self.close()

    def connected(self, to_client: bool, transport: asyncio.Transport) -> None:
        self.transports[to_client] = transport
        if self.native is None:  # the other side is gone already
            transport.close()
            return
        self.flush()  # what the client sent before the backend connection was up

    def received(self, from_client: bool, data: bytes) -> None:
        if self.native is None:
            return
        if lib.h2r_recv(self.native, from_client, data, len(data)) < 0:
            self.close()
            return
        self.flush()

    def flush(self) -> None:
        for to_client, transport in self.transports.items():
            if (data := lib.h2r_pending(self.native, to_client, self.pending)) != ffi.NULL:
                transport.write(ffi.buffer(data, self.pending[0])[:])

    def close(self) -> None:
        for transport in self.transports.values():
            transport.close()
        if self.native is not None:
            lib.h2r_free(self.native)
            self.native = None


def accept(backend: tuple[str, int]) -> Side:
    """The protocol of an accepted client connection, relayed to its own connection to
    `backend` (what tcp_relay.Client is to the byte relay)."""
    return Relay(backend).client()


if __name__ == "__main__":
    tcp_relay.run(__doc__, accept)
