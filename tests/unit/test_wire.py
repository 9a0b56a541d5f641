"""gRPC's wire rules as the native edge reads and writes them (router/native/wire.py)."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib

import grpc
import pytest
from google.rpc import status_pb2

from router.native import wire
from router.native.tier import grpc_timeout
from tiermesh.errors import StatusError

GRPC = [
    (":method", "POST"), (":path", "/tiermesh.v1.Mesh/Generate"), ("content-type", "application/grpc"),
    ("te", "trailers"),
]  # fmt: skip


def test_header_block_becomes_fields_and_metadata_without_grpcs_own_headers() -> None:
    token = base64.b64encode(b"\x00\xffbin").decode().rstrip("=")
    block = wire.flat([*GRPC, ("x-client-id", "studio"), ("trace-bin", token)])
    fields = wire.fields(block)
    assert fields[1] == (":path", "/tiermesh.v1.Mesh/Generate")
    assert wire.request(fields).metadata == [("x-client-id", "studio"), ("trace-bin", b"\x00\xffbin")]


@pytest.mark.parametrize(
    ("value", "seconds"), [("1H", 3600.0), ("250m", 0.25), ("15S", 15.0), ("2500u", 0.0025), ("7n", 7e-9)]
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert wire.timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "m", "12", "123456789m", "-5m", "5x", "\u00b2m", "\u0661\u0662m"])
def test_malformed_grpc_timeout_is_invalid_argument(value: str) -> None:
    with pytest.raises(StatusError) as caught:
        wire.request([*GRPC, ("grpc-timeout", value)])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_no_grpc_timeout_is_no_deadline() -> None:
    assert wire.request(GRPC).timeout is None


def test_timeouts_the_tier_client_sends_read_back() -> None:
    for seconds in (0.0001, 0.015, 3.0, 86_400.0, 400_000.0):
        sent = wire.timeout(grpc_timeout(seconds))
        assert sent == pytest.approx(max(seconds, 0.001), rel=0.01)


def test_the_request_message_comes_out_of_its_frame_compressed_or_not() -> None:
    assert wire.message(wire.request(GRPC), wire.frame(b"hello"), 64) == b"hello"
    packed = gzip.compress(b"hello")
    body = b"\1" + len(packed).to_bytes(4, "big") + packed
    assert wire.message(wire.request([*GRPC, ("grpc-encoding", "gzip")]), body, 64) == b"hello"


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        (GRPC, None, grpc.StatusCode.RESOURCE_EXHAUSTED),  # the edge stopped reading it
        (GRPC, wire.frame(b"x" * 65), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (GRPC, b"", grpc.StatusCode.INVALID_ARGUMENT),
        (GRPC, wire.frame(b"a") + wire.frame(b"b"), grpc.StatusCode.INVALID_ARGUMENT),
        (GRPC, wire.frame(b"abc")[:-1], grpc.StatusCode.INVALID_ARGUMENT),
        (
            [*GRPC[:2], ("content-type", "text/plain"), GRPC[3]],
            wire.frame(b"a"),
            grpc.StatusCode.UNIMPLEMENTED,
        ),
        (
            [*GRPC[:2], ("content-type", "application/grpc-web"), GRPC[3]],
            wire.frame(b"a"),
            grpc.StatusCode.UNIMPLEMENTED,
        ),
        ([(":method", "GET"), *GRPC[1:]], wire.frame(b"a"), grpc.StatusCode.UNIMPLEMENTED),
        (GRPC[:3], wire.frame(b"a"), grpc.StatusCode.INVALID_ARGUMENT),  # no te: trailers
        ([*GRPC, ("grpc-encoding", "snappy")], b"\1\0\0\0\1a", grpc.StatusCode.UNIMPLEMENTED),
        ([*GRPC, ("grpc-encoding", "gzip")], b"\1\0\0\0\3abc", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_request_bodies_get_a_precise_status(
    headers: list[tuple[str, str]], body: bytes | None, code: grpc.StatusCode
) -> None:
    with pytest.raises(StatusError) as caught:
        wire.message(wire.request(headers), body, 64)
    assert caught.value.code == code


@pytest.mark.parametrize(("headers", "status"), [
    ([(":method", "GET"), *GRPC[1:]], 405), ([*GRPC[:2], ("content-type", "text/html"), GRPC[3]], 415),
])  # fmt: skip
def test_requests_that_are_not_grpc_get_an_http_status_too(
    headers: list[tuple[str, str]], status: int
) -> None:
    with pytest.raises(wire.HttpRefusal) as caught:
        wire.message(wire.request(headers), wire.frame(b"a"), 64)
    assert caught.value.http_status == status


def test_malformed_binary_metadata_is_invalid_argument() -> None:
    with pytest.raises(StatusError) as caught:
        wire.request([*GRPC, ("trace-bin", "not base64!")])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "trace-bin" in caught.value.message


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_stops_at_the_size_limit(encoding: str) -> None:
    # 64 MiB of zeros packs into about 64 KiB; inflating stops just past the limit.
    bits = wire.WINDOW_BITS[encoding]
    packer = zlib.compressobj(9, zlib.DEFLATED, bits)
    packed = packer.compress(b"\0" * (64 << 20)) + packer.flush()
    body = b"\1" + len(packed).to_bytes(4, "big") + packed
    headers = wire.request([*GRPC, ("grpc-encoding", encoding)])
    tracemalloc.start()
    try:
        with pytest.raises(StatusError) as caught:
            wire.message(headers, body, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "decompressed" in caught.value.message
    assert peak < 4 << 20  # about the limit's worth, never the bomb's 64 MiB


def test_gzip_members_one_after_another_inflate_together_and_cut_ones_are_refused() -> None:
    headers = wire.request([*GRPC, ("grpc-encoding", "gzip")])
    packed = gzip.compress(b"hel") + gzip.compress(b"lo")
    assert wire.message(headers, b"\1" + len(packed).to_bytes(4, "big") + packed, 64) == b"hello"
    cut = gzip.compress(b"hello" * 100)[:-12]
    with pytest.raises(StatusError) as caught:
        wire.message(headers, b"\1" + len(cut).to_bytes(4, "big") + cut, 1024)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_trailers_carry_status_percent_encoded_message_and_details() -> None:
    rich = status_pb2.Status(code=8, message="full")
    fields = wire.fields(wire.trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "100% full: réessayez", rich))
    values = dict(fields)
    assert values["grpc-status"] == "8"
    assert values["grpc-message"] == "100%25 full: r%C3%A9essayez"
    assert status_pb2.Status.FromString(base64.b64decode(values["grpc-status-details-bin"])) == rich
    assert wire.fields(wire.OK_TRAILERS) == [("grpc-status", "0")]
