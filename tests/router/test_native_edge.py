"""What the native data plane (data_path.edge / tier_client: native) does that grpc.aio
did for it, beyond the router tests that run on both planes: surviving a caller that
breaks HTTP/2, compressed requests, draining on shutdown, and one tier connection
carrying many calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
import pytest_asyncio

from router.app import Router, start_router
from router.backends.tier_grpc import GENERATE
from router.edge.native import NativeEdge
from router.native import wire
from router.native.tier import TierConnection, TierStream
from router.server import MeshServicer
from router.settings import CallerLimits
from tests.doubles import Script, ScriptedTier, start_scripted_tier
from tests.fakes import request
from tests.router.conftest import router_settings, start_on
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEXT = "Halt! Who goes there?"


@pytest_asyncio.fixture(loop_scope="session")
async def native(scripted_silver: tuple[ScriptedTier, int]) -> AsyncIterator[Router]:
    _, port = scripted_silver
    router = await start_on("native", router_settings(f"127.0.0.1:{port}"))
    yield router
    await router.close(None)


async def answer(port: int, **options: object) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", **options) as channel:  # type: ignore[arg-type]
        return "".join([r.text async for r in mesh_pb2_grpc.MeshStub(channel).Generate(request(), timeout=5)])


async def test_a_caller_breaking_http2_loses_its_connection_only(
    native: Router, silver: ScriptedTier
) -> None:
    slow = asyncio.ensure_future(answer(native.port))  # a call in flight on its own connection
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64):
        reader, writer = await asyncio.open_connection("127.0.0.1", native.port)
        writer.write(garbage)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) is not None  # closed by the edge (GOAWAY at most)
        writer.close()
    assert await slow == TEXT
    assert await answer(native.port) == TEXT


async def test_gzip_compressed_requests_are_read(native: Router, silver: ScriptedTier) -> None:
    assert await answer(native.port, compression=grpc.Compression.Gzip) == TEXT
    assert silver.seen[-1].request.messages[-1].content == request().prompt


async def test_shutdown_lets_open_streams_finish_and_refuses_new_ones(
    scripted_silver: tuple[ScriptedTier, int], silver: ScriptedTier
) -> None:
    _, port = scripted_silver
    router = await start_on("native", router_settings(f"127.0.0.1:{port}"))
    silver.reset(Script(delay=0.1))  # 0.6 s of tokens
    in_flight = asyncio.ensure_future(answer(router.port))
    await silver.wait_for_streams(1)
    started = time.monotonic()
    await router.close(grace=5.0)
    assert time.monotonic() - started < 2.0  # it waited for the stream, not the whole grace
    assert await in_flight == TEXT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(router.port)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_one_connection_holds_at_most_its_stream_limit(
    scripted_silver: tuple[ScriptedTier, int], silver: ScriptedTier
) -> None:
    _, port = scripted_silver
    settings = router_settings(f"127.0.0.1:{port}")
    settings.router.limits.max_streams_per_connection = 2
    router = await start_on("native", settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = mesh_pb2_grpc.MeshStub(channel)

            async def one() -> str:
                return "".join([r.text async for r in stub.Generate(request(), timeout=5)])

            # A client learns the limit from the router's SETTINGS: streams it opens before
            # then, past the limit, are refused (REFUSED_STREAM) rather than queued.
            assert await one() == TEXT
            silver.reset(Script(delay=0.05))  # 0.3 s per stream
            calls = [asyncio.ensure_future(one()) for _ in range(4)]
            await silver.wait_for_streams(2)
            await asyncio.sleep(0.1)
            assert len(silver.seen) == 2  # the client holds the others back: none is lost
            assert await asyncio.gather(*calls) == [TEXT] * 4
        assert len(silver.seen) == 4
    finally:
        await router.close(None)


async def test_many_calls_share_one_tier_connection(native: Router, silver: ScriptedTier) -> None:
    silver.reset(Script(delay=0.01))
    texts = await asyncio.gather(*(answer(native.port) for _ in range(20)))
    assert texts == [TEXT] * 20
    (replica,) = native.replicas["silver"].replicas
    connection = replica.backend._connection  # type: ignore[attr-defined]
    assert connection is not None
    assert connection.usable()
    # The calls' tier streams end as their pipelines run out, just after their callers'
    # trailers (streams.run_out).
    async with asyncio.timeout(5):
        while connection.streams:  # noqa: ASYNC110 (the connection has no event for it)
            await asyncio.sleep(0.01)


async def test_a_taken_port_fails_the_start(
    native: Router, scripted_silver: tuple[ScriptedTier, int]
) -> None:
    _, port = scripted_silver
    settings = router_settings(f"127.0.0.1:{port}")
    settings.router.listen = f"127.0.0.1:{native.port}"  # the fixture's router has it
    with pytest.raises(OSError, match="address already in use"):
        await start_router(settings.router_config())
    assert await answer(native.port) == TEXT


class Hanging:
    """A servicer stand-in whose answers never come: what the edge's own deadline is for
    (a stage no tier call times, such as a caller that stopped reading)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def respond(self, *_: object) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        try:
            await asyncio.Event().wait()
            yield mesh_pb2.GenerateResponse()
        finally:
            self.closed.set()


def generate_headers(port: int, timeout: str) -> bytes:
    """A Generate call's request headers with `timeout` as its grpc-timeout."""
    return wire.flat(
        [(":method", "POST"), (":scheme", "http"), (":path", "/tiermesh.v1.Mesh/Generate"),
         (":authority", f"127.0.0.1:{port}"), ("te", "trailers"), ("content-type", "application/grpc"),
         ("grpc-timeout", timeout)]
    )  # fmt: skip


async def test_the_edge_ends_a_stream_at_its_deadline_and_only_then() -> None:
    servicer = Hanging()
    edge = NativeEdge(
        cast(MeshServicer, servicer),
        "/nonexistent/grpc.sock",
        1 << 20,
        limits=CallerLimits(max_streams_per_connection=8),
    )
    port = await edge.start("127.0.0.1:0")
    loop = asyncio.get_running_loop()
    # An HTTP/2 client that sends grpc-timeout but holds to no deadline of its own
    # (a grpc.aio client would end the call itself): only the edge can end it.
    _, caller = await loop.create_connection(TierConnection, "127.0.0.1", port)
    fields = generate_headers(port, "300m")
    body = wire.frame(request().SerializeToString())
    try:
        started = time.monotonic()
        stream = caller.request(fields, body, loop.time() + 30)
        assert stream is not None
        assert await stream.next() is None
        assert stream.status()[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.3 <= time.monotonic() - started < 2.0
        await asyncio.wait_for(servicer.closed.wait(), 2.0)  # its answer was cancelled
        # A caller that leaves is not a deadline, and leaves nothing behind.
        servicer.closed.clear()
        stream = caller.request(fields, body, loop.time() + 30)
        assert stream is not None
        await asyncio.sleep(0.1)
        stream.cancel()
        await asyncio.wait_for(servicer.closed.wait(), 2.0)
        await asyncio.sleep(0.4)  # past the deadline it had
        (connection,) = edge.connections
        assert not connection.streams
        assert not connection.expired
    finally:
        caller.close()
        await edge.close(None)


class Busy:
    """A servicer stand-in whose first call holds the event loop (a host busy with other
    work): what it records is when each call's clock started and when it first ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []  # (received, first ran)

    async def respond(
        self, request: object, metadata: object, time_remaining: float | None, received: float | None = None
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        self.calls.append((received if received is not None else time.monotonic(), time.monotonic()))
        if len(self.calls) == 1:
            time.sleep(0.1)  # noqa: ASYNC251 - holding the loop is the point
        yield mesh_pb2.GenerateResponse(text="ok", finish_reason=mesh_pb2.FINISH_REASON_STOP)


async def test_a_calls_deadline_counts_from_its_arrival_not_its_first_turn() -> None:
    """Calls that arrive together start one after another; one that waits for its turn
    behind a busy loop has spent that wait of its caller's deadline already."""
    servicer = Busy()
    edge = NativeEdge(cast(MeshServicer, servicer), "/nonexistent/grpc.sock", 1 << 20, limits=CallerLimits())
    port = await edge.start("127.0.0.1:0")
    loop = asyncio.get_running_loop()
    _, caller = await loop.create_connection(TierConnection, "127.0.0.1", port)
    fields = generate_headers(port, "2S")
    body = wire.frame(request().SerializeToString())
    try:
        # Written in one turn of the loop, so the edge reads both requests at once.
        streams = [caller.request(fields, body, loop.time() + 30) for _ in range(2)]
        for stream in streams:
            assert stream is not None
            while await stream.next() is not None:
                pass
            assert stream.status()[0] == grpc.StatusCode.OK
        (_, first_ran), (received, second_ran) = servicer.calls
        assert received <= first_ran < second_ran - 0.09  # its clock started before the wait
    finally:
        caller.close()
        await edge.close(None)


class Blackhole:
    """A TCP relay that can go silent: bytes stop both ways, no reset is sent (a host
    gone from the network, as a replica's vanished VM looks to the router)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not self.silent:
                    sink.write(data)

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def open_tier_stream(
    port: int, keepalive_s: float, timeout_s: float
) -> tuple[TierConnection, TierStream]:
    """A Generate call to the tier at `port` on a native tier connection, deadline 30 s."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: TierConnection(keepalive_s, timeout_s), "127.0.0.1", port
    )
    fields = wire.flat(
        [(":method", "POST"), (":scheme", "http"), (":path", GENERATE),
         (":authority", f"127.0.0.1:{port}"), ("te", "trailers"), ("content-type", "application/grpc")]
    )  # fmt: skip
    body = wire.frame(tier_pb2.GenerateRequest(request_id="keepalive").SerializeToString())
    stream = connection.request(fields, body, loop.time() + 30)
    assert stream is not None
    return connection, stream


@pytest.mark.parametrize("vanishes", [True, False])
async def test_a_silent_replica_is_found_by_keepalive_and_a_live_one_kept(vanishes: bool) -> None:
    silver = ScriptedTier()
    silver.reset(Script(hang=True))  # an open call that sends nothing: only pings are heard
    # Its server takes a ping every 0.1 s (tier servers: every 15 s, the router pings at 30).
    serving = await start_scripted_tier(silver, min_ping_interval_ms=100)
    blackhole = Blackhole(serving.port)
    connection, stream = await open_tier_stream(await blackhole.start(), keepalive_s=0.2, timeout_s=0.3)
    try:
        await silver.wait_for_streams(1)
        blackhole.silent = vanishes
        ended = asyncio.ensure_future(stream.next())
        done, _ = await asyncio.wait([ended], timeout=2.0)
        if vanishes:  # pinged after 0.2-0.4 s of silence, closed 0.3 s later
            assert done
            assert ended.result() is None
            assert stream.status() == (None, "stream reset (HTTP/2 error 2)")
            assert connection.native is None
        else:  # five rounds of pings answered: the call waits on, as it should
            assert not done
            assert connection.native is not None
            assert connection.streams
    finally:
        stream.cancel()
        stream.release()
        connection.close()
        blackhole.close()
        await serving.server.stop(None)


async def test_a_cancelled_tier_stream_leaves_its_connection_at_once() -> None:
    """Its RST_STREAM goes out as it is cancelled, and nghttp2 closes the stream as it
    sends it: the stream is gone from the connection then, not when the replica next
    sends something (a quiet replica may send nothing for a keepalive interval)."""
    silver = ScriptedTier()
    silver.reset(Script(hang=True))
    serving = await start_scripted_tier(silver)
    connection, stream = await open_tier_stream(serving.port, keepalive_s=30, timeout_s=20)
    try:
        await silver.wait_for_streams(1)
        stream.cancel()
        assert not connection.streams
        stream.release()
        assert stream.handle is None  # freed: nghttp2 is done with it too
        await asyncio.wait_for(silver.cancelled_event.wait(), 5)
    finally:
        connection.close()
        await serving.server.stop(None)


def h2_frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field literal, not indexed, without Huffman (RFC 7541 6.2.2; short strings)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


# A raw HTTP/2 caller's part: frame types and flags (RFC 9113 6), a Generate call's headers.
DATA, HEADERS, RST_STREAM, SETTINGS, PING = 0x0, 0x1, 0x3, 0x4, 0x6
END_STREAM, ACK, END_HEADERS, REFUSED_STREAM = 0x1, 0x1, 0x4, 0x7
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GENERATE_BLOCK = b"".join(
    hpack_literal(name, value)
    for name, value in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/tiermesh.v1.Mesh/Generate"),
        (b":authority", b"edge"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]
)  # fmt: skip


async def test_streams_past_a_connections_limit_are_refused_even_before_settings_are_acked() -> None:
    # A client that ignores the SETTINGS_MAX_CONCURRENT_STREAMS the edge sent (gRPC's
    # queue the extra streams themselves): nghttp2 refuses the third stream outright.
    edge = NativeEdge(
        cast(MeshServicer, Hanging()),
        "/nonexistent/grpc.sock",
        1 << 20,
        limits=CallerLimits(max_streams_per_connection=2),
    )
    port = await edge.start("127.0.0.1:0")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(PREFACE + h2_frame(SETTINGS, 0, 0))
        writer.write(b"".join(h2_frame(HEADERS, END_HEADERS, sid, GENERATE_BLOCK) for sid in (1, 3, 5)))
        resets: dict[int, int] = {}
        async with asyncio.timeout(5):
            while 5 not in resets:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                if head[3] == RST_STREAM:
                    resets[int.from_bytes(head[5:9], "big") & 0x7FFFFFFF] = int.from_bytes(payload, "big")
        assert resets == {5: REFUSED_STREAM}  # the first two stay open
        (connection,) = edge.connections
        assert connection.open_streams() == 2
    finally:
        writer.close()
        await edge.close(None)


@pytest.mark.parametrize("caller", ["vanishes", "answers", "idle"])
async def test_a_silent_caller_is_found_by_keepalive_and_a_live_one_kept(caller: str) -> None:
    # A caller gone without a reset (its host or NAT forgot the connection) holds its
    # calls, which may have no deadline, and its connection. The edge pings a connection
    # with calls open after 0.2 s without a word from it, and drops it 0.3 s later.
    servicer = Hanging()
    edge = NativeEdge(
        cast(MeshServicer, servicer), "/nonexistent/grpc.sock", 1 << 20,
        limits=CallerLimits(max_streams_per_connection=8), keepalive_s=0.2, keepalive_timeout_s=0.3,
    )  # fmt: skip
    port = await edge.start("127.0.0.1:0")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pings = 0

    async def read_frames() -> None:
        nonlocal pings
        while True:
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            if head[3] == PING and not head[4] & ACK:
                pings += 1
                if caller == "answers":
                    writer.write(h2_frame(PING, ACK, 0, payload))

    try:
        writer.write(PREFACE + h2_frame(SETTINGS, 0, 0) + h2_frame(SETTINGS, ACK, 0))
        if caller != "idle":  # a call with no grpc-timeout: only the caller could end it
            writer.write(h2_frame(HEADERS, END_HEADERS, 1, GENERATE_BLOCK))
            writer.write(h2_frame(DATA, END_STREAM, 1, wire.frame(b"")))
        reading = asyncio.ensure_future(read_frames())
        done, _ = await asyncio.wait([reading], timeout=1.5)
        if caller == "vanishes":  # pinged after 0.2-0.4 s of silence, dropped 0.3 s later
            assert done
            assert isinstance(reading.exception(), asyncio.IncompleteReadError)  # the edge closed it
            assert pings == 1
            await asyncio.wait_for(servicer.closed.wait(), 1)  # and its call ended
            assert not edge.connections
        else:
            assert not done
            reading.cancel()
            assert len(edge.connections) == 1
            if caller == "answers":  # pinged every other 0.2 s tick, each answered
                assert pings >= 2
                assert not servicer.closed.is_set()
            else:
                assert pings == 0  # no calls, no pings: gRPC servers refuse them by default
    finally:
        writer.close()
        await edge.close(None)


@pytest.mark.parametrize("bdp_probe", [1, 0])
async def test_messages_larger_than_a_window_arrive_whole(
    native: Router, silver: ScriptedTier, bdp_probe: int
) -> None:
    # Past the tier's 64 KiB stream window, which reopens only as the tier client takes
    # what came, a token straddles several takes. Toward the caller, the edge's queue
    # passes its high-water mark: a grpc.aio client's large window takes it all at once
    # (no DRAINED to wait for); without its BDP probe the window stays small and the
    # stream waits for its bytes to drain while the caller reads slowly.
    tokens = ["x" * 150_000, "y" * 150_000, "!"]
    silver.reset(Script(tokens=tokens))
    options = [("grpc.http2.bdp_probe", bdp_probe)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{native.port}", options=options) as channel:
        call = mesh_pb2_grpc.MeshStub(channel).Generate(request(), timeout=5)
        texts = []
        while isinstance(response := await call.read(), mesh_pb2.GenerateResponse):
            texts.append(response.text)
            await asyncio.sleep(0.1)
    assert "".join(texts) == "".join(tokens)
