"""The edge under hostile callers (router.limits): each attack, written as raw HTTP/2
frames against a real `tiermesh router` process, gets its precise answer (a gRPC status,
RST_STREAM or GOAWAY), while a caller beside it on its own connection (tests/prober.py,
a process of its own) keeps its health checks answered within 100 ms, and the router's
memory stays within 64 MiB of where it was per attacking connection and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml
from grpc_reflection.v1alpha import reflection_pb2

from bench.paths import rss_kb
from ops.mesh import wait_serving
from router.settings import CallerLimits
from tests import h2raw
from tests.doubles import ScriptedTier
from tests.fakes import request
from tests.h2raw import RawCaller, frame, grpc_message, headers_frames, request_headers
from tests.router.conftest import router_settings, start_on
from tiermesh.v1 import mesh_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

LISTEN = "127.0.0.1:50391"
PORT = int(LISTEN.rpartition(":")[2])
METRICS_PORT = 9793
# Short timeouts, so that a test waits seconds, not the defaults' minutes.
MAX_CONNECTIONS = 16
LIMITS = {
    "preface_timeout_s": 1.0, "header_timeout_s": 1.0, "body_timeout_s": 1.5, "idle_timeout_s": 3.0,
    "max_connections": MAX_CONNECTIONS,
}  # fmt: skip
MIB = 1 << 20
PROBE_BOUND_MS = 100.0
GRPC_OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 3, 4, 8, 12
HEALTH_CHECK = b"/grpc.health.v1.Health/Check"
REFLECTION = b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@dataclass
class RouterProcess:
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def refused(self) -> dict[str, float]:
        """tiermesh_router_edge_refused_total by reason."""
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        found = re.findall(r'^tiermesh_router_edge_refused_total\{reason="(\w+)"\} (\S+)$', text, re.M)
        return {reason: float(value) for reason, value in found}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def router(
    tmp_path_factory: pytest.TempPathFactory, scripted_silver: tuple[ScriptedTier, int]
) -> AsyncIterator[RouterProcess]:
    _, silver_port = scripted_silver
    work = tmp_path_factory.mktemp("hostile")
    config = work / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "router": {
                    "listen": LISTEN,
                    "metrics_port": METRICS_PORT,
                    "tiers": {"silver": {"endpoints": [f"127.0.0.1:{silver_port}"]}},
                    "data_path": {"huge_page_heap": False},
                    "limits": LIMITS,
                },
                "personas": {"guard-1": {"system": "You are Brom, the north gate guard."}},
            }
        )
    )
    log = work / "router.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops.cli", "router", "--config", str(config), stdout=out, stderr=out
        )
    try:
        await asyncio.to_thread(wait_serving, "router", LISTEN, 60)
        yield RouterProcess(process, log)
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class Watch:
    """What a caller beside the attack saw, and the router's memory meanwhile."""

    pid: int
    baseline_kib: int = 0
    peak_kib: int = 0
    probes_ms: list[float] = field(default_factory=list)

    def unharmed(self, connections: int = 1) -> None:
        assert len(self.probes_ms) >= 3, "the prober ran through the attack"
        assert max(self.probes_ms) <= PROBE_BOUND_MS, (
            f"a caller beside it waited: {sorted(self.probes_ms)[-5:]}"
        )
        grown = (self.peak_kib - self.baseline_kib) / 1024
        assert grown <= 64 * connections, f"the router grew {grown:.0f} MiB"

    async def settles(self, within_mib: float = 16.0) -> None:
        """The router's memory comes back near where it was (Python keeps some)."""
        async with asyncio.timeout(10):
            while (rss_kb(self.pid) - self.baseline_kib) / 1024 > within_mib:  # noqa: ASYNC110
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def attack(router: RouterProcess) -> AsyncIterator[Watch]:
    """The block runs an attack; a prober in a process of its own checks health on its own
    connection meanwhile, and the router's RSS is sampled every 5 ms."""
    watch = Watch(router.pid, baseline_kib=rss_kb(router.pid))
    watch.peak_kib = watch.baseline_kib
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.prober", LISTEN, stdout=asyncio.subprocess.PIPE
    )
    assert prober.stdout is not None
    assert await asyncio.wait_for(prober.stdout.readline(), 30) == b"ready\n"

    async def sample() -> None:
        while True:
            watch.peak_kib = max(watch.peak_kib, rss_kb(router.pid))
            await asyncio.sleep(0.005)

    sampler = asyncio.ensure_future(sample())
    try:
        await asyncio.sleep(0.05)
        yield watch
        await asyncio.sleep(0.05)
    finally:
        sampler.cancel()
        prober.terminate()
        out, _ = await prober.communicate()
        watch.probes_ms = json.loads(out)


def generate(sid: int, payload: bytes | None = None, **extra: bytes) -> bytes:
    """A whole Generate call on stream `sid`."""
    body = grpc_message(request().SerializeToString() if payload is None else payload)
    encoded = h2raw.block(request_headers(**extra))
    return headers_frames(sid, encoded) + frame(h2raw.DATA, h2raw.END_STREAM, sid, body)


# --- headers ----------------------------------------------------------------------------


def header_bomb(sid: int, references: int) -> bytes:
    """A header block whose one field of ~4 KB is kept in HPACK's table, then named again
    `references` times by a one-byte index: a few hundred KiB that stand for ~1 GiB."""
    encoded = h2raw.block(request_headers()) + h2raw.literal(b"x-bomb", b"a" * 4000, indexed=True)
    return headers_frames(sid, encoded + b"\xbe" * references)  # 0xbe: the table's newest entry


# nghttp2 takes a header block of at most 9 frames (HEADERS and 8 CONTINUATION): 144 KiB.
BOMB_REFERENCES = 9 * h2raw.MAX_FRAME - 4400


async def test_a_header_list_bomb_is_refused_without_being_kept(router: RouterProcess) -> None:
    before = router.refused()["header_limit"]
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT)
        sids = [1, 3, 5, 7]
        for sid in sids:  # 144 KiB each, ~570 MB of fields each once expanded
            caller.send(header_bomb(sid, BOMB_REFERENCES) + frame(h2raw.DATA, h2raw.END_STREAM, sid, b""))
        streams = await caller.ended(sids, within_s=20)
    # Reset at once: past the limit, the rest of the block is decoded but not looked at.
    # gRPC clients report ENHANCE_YOUR_CALM as RESOURCE_EXHAUSTED.
    assert [stream.reset for stream in streams] == [h2raw.ENHANCE_YOUR_CALM] * 4
    assert router.refused()["header_limit"] == before + 4
    # The connection lives on: a proper call on it is answered.
    caller.send(generate(9))
    (call,) = await caller.ended([9])
    assert call.status == GRPC_OK
    caller.close()
    watch.unharmed()
    await watch.settles()


async def test_a_header_block_of_more_frames_loses_its_connection(router: RouterProcess) -> None:
    caller = await RawCaller.connect(PORT)
    caller.send(header_bomb(1, BOMB_REFERENCES + h2raw.MAX_FRAME))  # a tenth frame
    await caller.until_closed()
    caller.close()
    assert caller.goaway is not None
    assert caller.goaway[1] == h2raw.PROTOCOL_ERROR


async def test_too_many_header_fields_are_refused(router: RouterProcess) -> None:
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT)
        many = {f"x_field_{i}": b"v" for i in range(200)}
        caller.send(generate(1, **many))
        (stream,) = await caller.ended([1])
        caller.close()
    assert stream.reset == h2raw.ENHANCE_YOUR_CALM
    watch.unharmed()


@pytest.mark.parametrize("size", [20_000, 60_000])  # a field over 64 KiB: nghttp2 says COMPRESSION_ERROR
async def test_a_grpc_client_with_too_much_metadata_hears_resource_exhausted(
    router: RouterProcess, size: int
) -> None:
    before = router.refused()["header_limit"]
    async with grpc.aio.insecure_channel(LISTEN) as channel:
        call = mesh_pb2_grpc.MeshStub(channel).Generate(
            request(), metadata=[("x-big", "v" * size)], timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert router.refused()["header_limit"] == before + 1  # the edge's answer, not the client's own check


@pytest.mark.parametrize(
    ("extra", "status", "mentions"),
    [
        ({"grpc_timeout": "١٢m".encode()}, INVALID_ARGUMENT, "malformed grpc-timeout"),
        ({"grpc_timeout": b"99999999999H"}, INVALID_ARGUMENT, "malformed grpc-timeout"),
        ({"x_trace_bin": b"!!not base64!!"}, INVALID_ARGUMENT, "is not base64"),
    ],
)
async def test_malformed_metadata_is_invalid_argument_in_one_log_line(
    router: RouterProcess, extra: dict[str, bytes], status: int, mentions: str
) -> None:
    logged = router.log.read_text()
    caller = await RawCaller.connect(PORT)
    caller.send(generate(1, **extra))
    (stream,) = await caller.ended([1])
    caller.close()
    assert stream.status == status
    assert mentions in (stream.field("grpc-message") or "")
    await asyncio.sleep(0.2)  # the log line is written as the call ends
    new = router.log.read_text()[len(logged) :]
    assert "Traceback" not in new
    assert len([line for line in new.splitlines() if mentions in line]) == 1


@pytest.mark.parametrize(
    ("headers", "http_status", "status"),
    [
        (lambda: [(b":method", b"GET"), *request_headers()[1:]], "405", UNIMPLEMENTED),
        (lambda: [h for h in request_headers() if h[0] != b"te"], "200", INVALID_ARGUMENT),
        (
            lambda: [*request_headers()[:4], (b"content-type", b"text/plain"), (b"te", b"trailers")],
            "415",
            UNIMPLEMENTED,
        ),
    ],
)
async def test_requests_that_break_grpcs_rules_get_a_precise_answer(
    router: RouterProcess, headers: Callable[[], list[tuple[bytes, bytes]]], http_status: str, status: int
) -> None:
    caller = await RawCaller.connect(PORT)
    body = grpc_message(request().SerializeToString())
    caller.send(headers_frames(1, h2raw.block(headers())) + frame(h2raw.DATA, h2raw.END_STREAM, 1, body))
    (stream,) = await caller.ended([1])
    caller.close()
    assert stream.field(":status") == http_status
    assert stream.status == status


# --- bodies -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """512 MiB of zeros, gzipped: about 500 KiB, under the 1 MiB message limit."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    return b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()


async def test_a_decompression_bomb_stops_at_the_message_limit(
    router: RouterProcess, gzip_bomb: bytes
) -> None:
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT)
        body = grpc_message(gzip_bomb, compressed=True)
        encoded = h2raw.block(request_headers(grpc_encoding=b"gzip"))
        for sid in (1, 3):
            caller.send(headers_frames(sid, encoded))
            await caller.send_data(sid, body, end_stream=True)
        streams = await caller.ended([1, 3], within_s=20)
        caller.close()
    for stream in streams:
        assert stream.status == RESOURCE_EXHAUSTED
        assert "once decompressed" in (stream.field("grpc-message") or "")
    watch.unharmed()
    await watch.settles()


async def test_a_length_prefix_that_lies_is_answered_at_once(router: RouterProcess) -> None:
    caller = await RawCaller.connect(PORT)
    encoded = h2raw.block(request_headers())
    # Claims 4 GB and ends after 10 bytes: not one whole message.
    caller.send(
        headers_frames(1, encoded)
        + frame(h2raw.DATA, h2raw.END_STREAM, 1, grpc_message(b"x" * 10, length=2**32 - 1))
    )
    # Claims 4 GB and keeps sending: answered once it passes the limit, not at its end.
    caller.send(headers_frames(3, encoded))
    await caller.send_data(3, grpc_message(b"x" * (MIB + 100_000), length=2**32 - 1))  # never ended
    first, second = await caller.ended([1, 3])
    caller.close()
    assert first.status == INVALID_ARGUMENT
    assert second.status == RESOURCE_EXHAUSTED


async def test_unfinished_bodies_are_held_within_a_budget_then_answered(router: RouterProcess) -> None:
    before = router.refused()
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT)
        encoded = h2raw.block(request_headers())
        sids = list(range(1, 2 * 24, 2))
        almost = grpc_message(b"", length=MIB - 16) + b"x" * (MIB - 32)
        for sid in sids:  # 24 requests of 1 MiB, none finished: 24 MiB against an 8 MiB budget
            caller.send(headers_frames(sid, encoded))
            await caller.send_data(sid, almost)
        streams = await caller.ended(sids, within_s=20)
        caller.close()
    statuses = [stream.status for stream in streams]
    # The first eight fit the budget and wait for their end until the body timeout; the rest
    # are refused as they pass it.
    assert statuses == [DEADLINE_EXCEEDED] * 8 + [RESOURCE_EXHAUSTED] * (len(sids) - 8)
    after = router.refused()
    assert after["buffered_limit"] - before["buffered_limit"] == len(sids) - 8
    assert after["body_timeout"] - before["body_timeout"] == 8
    watch.unharmed()
    await watch.settles()


# --- flow control -----------------------------------------------------------------------


def reflection_request() -> bytes:
    asked = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tiermesh.v1.Mesh")
    return grpc_message(asked.SerializeToString())


async def test_a_relayed_stream_that_is_not_read_holds_back_no_other(router: RouterProcess) -> None:
    # The caller grants its streams no window (SETTINGS_INITIAL_WINDOW_SIZE 0) and opens
    # the window of the ones it reads itself. Stream 1 asks reflection for ~300 KB and
    # never reads; a health check on stream 3 of the same connection is still answered.
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT, settings={h2raw.INITIAL_WINDOW_SIZE: 0})
        caller.send(frame(h2raw.WINDOW_UPDATE, 0, 0, (16 * MIB).to_bytes(4, "big")))
        caller.send(headers_frames(1, h2raw.block(request_headers(REFLECTION))))
        caller.send(b"".join(frame(h2raw.DATA, 0, 1, reflection_request()) for _ in range(30)))
        await asyncio.sleep(0.5)  # the relay fills up with what stream 1 does not read
        for sid in (3, 5, 7):
            started = asyncio.get_running_loop().time()
            health = grpc_message(b"")
            caller.send(
                headers_frames(sid, h2raw.block(request_headers(HEALTH_CHECK)))
                + frame(h2raw.WINDOW_UPDATE, 0, sid, MIB.to_bytes(4, "big"))
                + frame(h2raw.DATA, h2raw.END_STREAM, sid, health)
            )
            (stream,) = await caller.ended([sid], within_s=5)
            assert stream.status == GRPC_OK
            assert asyncio.get_running_loop().time() - started < PROBE_BOUND_MS / 1000
        assert not caller.stream(1).data  # it granted no window: nothing was sent it
        caller.close()
    watch.unharmed()


# --- connections ------------------------------------------------------------------------


async def test_a_connection_that_never_sends_its_preface_is_dropped(router: RouterProcess) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    caller = await RawCaller.connect(PORT, greet=False)
    await caller.until_closed(within_s=5)
    caller.close()
    assert loop.time() - started >= 0.9  # preface_timeout_s: 1; not before


async def test_a_header_block_left_unfinished_drops_its_connection_with_goaway(router: RouterProcess) -> None:
    caller = await RawCaller.connect(PORT)
    await caller.wait(
        lambda: caller.settings
    )  # acknowledged: nothing of ours comes between the block's frames
    started = asyncio.get_running_loop().time()
    caller.send(headers_frames(1, h2raw.block(request_headers()), end_headers=False))
    await caller.until_closed(within_s=5)
    assert asyncio.get_running_loop().time() - started >= 0.9  # header_timeout_s: 1; not before
    caller.close()
    assert caller.goaway is not None
    assert caller.goaway[1] == h2raw.ENHANCE_YOUR_CALM


async def test_an_idle_connection_is_told_goaway_and_closed(router: RouterProcess) -> None:
    caller = await RawCaller.connect(PORT)
    caller.send(generate(1))
    (stream,) = await caller.ended([1])
    assert stream.status == GRPC_OK
    await caller.until_closed(within_s=8)  # idle_timeout_s: 3
    caller.close()
    assert caller.goaway == (1, h2raw.NO_ERROR, b"")


@pytest.mark.parametrize(
    "garbage",
    [
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # not HTTP/2's preface
        h2raw.PREFACE + frame(h2raw.SETTINGS, 0, 0) + frame(h2raw.DATA, 0, 0, b"x"),  # DATA on stream 0
        h2raw.PREFACE
        + frame(h2raw.SETTINGS, 0, 0)
        + frame(h2raw.HEADERS, h2raw.END_HEADERS, 2, b""),  # even id
    ],
)
async def test_a_protocol_error_gets_goaway_before_the_connection_closes(
    router: RouterProcess, garbage: bytes
) -> None:
    caller = await RawCaller.connect(PORT, greet=False)
    caller.send(garbage)
    await caller.until_closed()
    caller.close()
    assert caller.goaway is not None
    assert caller.goaway[1] == h2raw.PROTOCOL_ERROR


async def test_connections_past_the_limit_are_refused_with_goaway(router: RouterProcess) -> None:
    callers = []
    try:
        for _ in range(MAX_CONNECTIONS + 1):
            callers.append(await RawCaller.connect(PORT))
        refused = callers[-1]
        await refused.until_closed()
        assert refused.goaway is not None
        assert refused.goaway[:2] == (0, h2raw.ENHANCE_YOUR_CALM)
        assert sum(c.closed.is_set() for c in callers) == 1  # the last, only: none held before it lost
    finally:
        for caller in callers:
            caller.close()
    await asyncio.sleep(0.2)
    caller = await RawCaller.connect(PORT)  # their places are free again
    caller.send(generate(1))
    (stream,) = await caller.ended([1])
    caller.close()
    assert stream.status == GRPC_OK


# nghttp2's limit on streams reset (nghttp2_session_new: nghttp2_ratelim_init(1000, 33)).
RESETS_BURST = 1000


async def test_a_rapid_reset_flood_leaves_the_router_unharmed(router: RouterProcess) -> None:
    async with attack(router) as watch:
        caller = await RawCaller.connect(PORT)
        encoded = h2raw.block(request_headers())
        for first in range(1, 20_000, 2 * 500):
            if caller.closed.is_set():
                break
            caller.send(
                b"".join(
                    headers_frames(sid, encoded)
                    + frame(h2raw.RST_STREAM, 0, sid, h2raw.CANCEL.to_bytes(4, "big"))
                    for sid in range(first, first + 1000, 2)
                )
            )
            await caller.drain()
        await asyncio.sleep(0.5)
        caller.close()
    # The flood is taken in stride, or ended by GOAWAY: ENHANCE_YOUR_CALM from the edge, or
    # INTERNAL_ERROR from nghttp2's own rapid-reset limit (CVE-2023-44487: a burst of
    # RESETS_BURST resets, then 33 a second), which of them comes first is the machine's
    # speed. Either way the router is unharmed. An INTERNAL_ERROR before that burst was
    # spent would be the edge failing, not the limit.
    if caller.goaway is not None:
        last_sid, code, _ = caller.goaway
        assert code in (h2raw.ENHANCE_YOUR_CALM, h2raw.INTERNAL_ERROR), caller.goaway
        if code == h2raw.INTERNAL_ERROR:
            assert last_sid >= 2 * RESETS_BURST - 1, caller.goaway
    watch.unharmed()
    await watch.settles()


async def test_grpc_aio_edge_options_carry_the_limits() -> None:
    """The grpc.aio edge has no C of ours: the limits it can take are gRPC core's options
    (router/app.py), set from the same settings."""
    from router.edge import grpc_edge_options
    from router.settings import DataPathSettings

    options = dict(grpc_edge_options(DataPathSettings(), CallerLimits(max_header_list_bytes=4096)))
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 4096
    assert options["grpc.server_handshake_timeout_ms"] == 10_000


async def test_the_grpc_aio_edge_keeps_the_limits_grpc_core_has(
    scripted_silver: tuple[ScriptedTier, int], gzip_bomb: bytes
) -> None:
    """`data_path.edge: grpc` has no C of ours: gRPC core keeps the limits it has, from the
    same settings (router/app.py, grpc_edge_options); docs/operations.md says which."""
    _, port = scripted_silver
    settings = router_settings(f"127.0.0.1:{port}")
    settings.router.max_message_bytes = MIB
    settings.router.limits = CallerLimits(preface_timeout_s=1.0, idle_timeout_s=2.0)
    edge = await start_on("grpc", settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            call = mesh_pb2_grpc.MeshStub(channel).Generate(request(), metadata=[("x-big", "v" * 20_000)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        caller = await RawCaller.connect(edge.port)
        caller.send(headers_frames(1, h2raw.block(request_headers(grpc_encoding=b"gzip"))))
        await caller.send_data(1, grpc_message(gzip_bomb, compressed=True), end_stream=True)
        (bomb,) = await caller.ended([1], within_s=20)
        assert bomb.status == RESOURCE_EXHAUSTED
        await caller.until_closed(within_s=8)  # idle
        silent = await RawCaller.connect(edge.port, greet=False)
        await silent.until_closed(within_s=5)  # no preface
    finally:
        await edge.close(None)
