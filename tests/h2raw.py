"""A raw HTTP/2 caller, for the tests that play a hostile client: it writes whatever
frames a test hands it (bombs, half blocks, frames out of order) and reads back what the
server said, stream by stream, with its header blocks decoded (PyPI `hpack`, the
decoder of h2). RFC 9113 for frames, RFC 7541 for HPACK."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from hpack import Decoder

# Frame types and flags (RFC 9113 6), error codes (7), settings (6.5.2).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 2, 7, 8, 11
INITIAL_WINDOW_SIZE = 4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16_384


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix; `first` holds the first byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def text(value: bytes) -> bytes:
    """An HPACK string literal, without Huffman."""
    return integer(len(value), 7) + value


def literal(name: bytes, value: bytes, indexed: bool = False) -> bytes:
    """A header field with a new name: kept in the dynamic table (`indexed`) or not."""
    return (b"\x40" if indexed else b"\x00") + text(name) + text(value)


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(literal(name, value) for name, value in headers)


def request_headers(path: bytes = b"/tiermesh.v1.Mesh/Generate", **extra: bytes) -> list[tuple[bytes, bytes]]:
    """A gRPC request's headers; `extra` adds fields (underscores become dashes)."""
    fields = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"router"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]  # fmt: skip
    return fields + [(name.replace("_", "-").encode(), value) for name, value in extra.items()]


def headers_frames(sid: int, encoded: bytes, end_stream: bool = False, end_headers: bool = True) -> bytes:
    """A header block as HEADERS and CONTINUATION frames of at most 16 KiB."""
    parts = [encoded[i : i + MAX_FRAME] for i in range(0, len(encoded), MAX_FRAME)] or [b""]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        flags = (END_HEADERS if last and end_headers else 0) | (END_STREAM if i == 0 and end_stream else 0)
        out.append(frame(HEADERS if i == 0 else CONTINUATION, flags, sid, part))
    return b"".join(out)


def grpc_message(payload: bytes, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message; `length` may claim another size than it has."""
    return bytes([compressed]) + (len(payload) if length is None else length).to_bytes(4, "big") + payload


@dataclass
class Stream:
    headers: list[list[tuple[str, str]]] = field(default_factory=list)  # each block received
    data: bytes = b""
    ended: bool = False
    reset: int | None = None  # RST_STREAM's error code

    def field(self, name: str) -> str | None:
        """A field of the last block that has it (trailers before headers)."""
        return next((v for fields in reversed(self.headers) for k, v in fields if k == name), None)

    @property
    def status(self) -> int | None:
        """grpc-status, when it came."""
        value = self.field("grpc-status")
        return None if value is None else int(value)


class RawCaller:
    """One connection, its frames written as given; what comes back gathered by a reader."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, quiet: bool = False
    ) -> None:
        self.reader, self.writer = reader, writer
        self.quiet = quiet  # acknowledges nothing: says only what a test hands it
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int, bytes] | None = None  # last stream id, error code, debug
        self.closed = asyncio.Event()  # the server closed the connection
        self.settings: dict[int, int] = {}
        # What the server lets us send: the connection's window and each stream's.
        self.windows: dict[int, int] = {0: 65_535}
        self.pings = 0
        self.changed = asyncio.Event()
        self._decoder = Decoder()
        self._block: tuple[int, bytearray] | None = None
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls, port: int, settings: dict[int, int] | None = None, greet: bool = True
    ) -> RawCaller:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        caller = cls(reader, writer, quiet=not greet)
        if greet:
            payload = b"".join(
                k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in (settings or {}).items()
            )
            caller.send(PREFACE + frame(SETTINGS, 0, 0, payload))
        return caller

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def answer(self, data: bytes) -> None:
        """What the protocol has a caller say back (ACKs, window updates)."""
        if not self.quiet:
            self.send(data)

    async def send_data(
        self, sid: int, data: bytes, end_stream: bool = False, within_s: float = 10.0
    ) -> None:
        """DATA within the server's flow-control windows (a caller that ignores them gets
        RST_STREAM FLOW_CONTROL_ERROR, another test's business)."""
        async with asyncio.timeout(within_s):
            while True:
                room = min(self.windows[0], self._window(sid), MAX_FRAME, len(data))
                if room or not data:
                    chunk, data = data[:room], data[room:]
                    self.windows[0] -= room
                    self.windows[sid] -= room
                    last = end_stream and not data
                    self.send(frame(DATA, END_STREAM if last else 0, sid, chunk))
                    if not data:
                        await self.drain()
                        return
                    continue
                if self.closed.is_set() or self.stream(sid).reset is not None or self.stream(sid).ended:
                    return  # answered, or gone: the rest is not wanted
                await self.drain()
                self.changed.clear()
                await self.changed.wait()

    def _window(self, sid: int) -> int:
        return self.windows.setdefault(sid, self.settings.get(INITIAL_WINDOW_SIZE, 65_535))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def stream(self, sid: int) -> Stream:
        return self.streams.setdefault(sid, Stream())

    async def wait(self, done: object, within_s: float = 10.0) -> None:
        """Until `done()` is true (or the connection closed; then it must be true too)."""
        async with asyncio.timeout(within_s):
            while not done():  # type: ignore[operator]
                if self.closed.is_set():
                    assert done(), "the server closed the connection first"  # type: ignore[operator]
                    return
                self.changed.clear()
                await self.changed.wait()

    async def ended(self, sids: list[int], within_s: float = 10.0) -> list[Stream]:
        await self.wait(
            lambda: all(self.stream(s).ended or self.stream(s).reset is not None for s in sids), within_s
        )
        return [self.stream(s) for s in sids]

    async def until_closed(self, within_s: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), within_s)

    def close(self) -> None:
        self._reading.cancel()
        self.writer.close()

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(9)
                payload = await self.reader.readexactly(int.from_bytes(head[:3], "big"))
                self._frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF, payload)
                self.changed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
            self.changed.set()

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == DATA:
            stream = self.stream(sid)
            stream.data += payload
            stream.ended |= bool(flags & END_STREAM)
            if payload:  # keep reading: credit the window back
                credit = len(payload).to_bytes(4, "big")
                self.answer(frame(WINDOW_UPDATE, 0, 0, credit) + frame(WINDOW_UPDATE, 0, sid, credit))
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                self._block = (sid, bytearray(payload))
                if flags & END_STREAM:
                    self.stream(sid).ended = True
            elif self._block is not None:
                self._block[1].extend(payload)
            if flags & END_HEADERS and self._block is not None:
                decoded = self._decoder.decode(bytes(self._block[1]), raw=False)
                self.stream(self._block[0]).headers.append([(str(k), str(v)) for k, v in decoded])
                self._block = None
        elif kind == RST_STREAM:
            self.stream(sid).reset = int.from_bytes(payload, "big")
        elif kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = (
                    int.from_bytes(payload[i : i + 2], "big"),
                    int.from_bytes(payload[i + 2 : i + 6], "big"),
                )
                if key == INITIAL_WINDOW_SIZE:  # open streams' windows move by the difference
                    for sid in self.windows.keys() - {0}:
                        self.windows[sid] += value - self.settings.get(INITIAL_WINDOW_SIZE, 65_535)
                self.settings[key] = value
            self.answer(frame(SETTINGS, ACK, 0))
        elif kind == WINDOW_UPDATE:
            self.windows[sid] = self._window(sid) + (int.from_bytes(payload, "big") & 0x7FFF_FFFF)
        elif kind == PING and not flags & ACK:
            self.pings += 1
            self.answer(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
            self.goaway = (last, int.from_bytes(payload[4:8], "big"), payload[8:])
