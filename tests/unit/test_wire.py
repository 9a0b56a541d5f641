"""gRPC's wire rules as the native edge reads and writes them (router/native/wire.py)."""

from __future__ import annotations

import base64
import gzip

import grpc
import pytest
from google.rpc import status_pb2

from router.native import wire
from router.native.tier import grpc_timeout
from tiermesh.errors import StatusError

GRPC = [(":path", "/tiermesh.v1.Mesh/Generate"), ("content-type", "application/grpc")]


def test_header_block_becomes_fields_and_metadata_without_grpcs_own_headers() -> None:
    token = base64.b64encode(b"\x00\xffbin").decode().rstrip("=")
    block = wire.flat([*GRPC, ("te", "trailers"), ("x-client-id", "studio"), ("trace-bin", token)])
    fields = wire.fields(block)
    assert fields[0] == (":path", "/tiermesh.v1.Mesh/Generate")
    assert wire.request(fields).metadata == [("x-client-id", "studio"), ("trace-bin", b"\x00\xffbin")]


@pytest.mark.parametrize(
    ("value", "seconds"), [("1H", 3600.0), ("250m", 0.25), ("15S", 15.0), ("2500u", 0.0025), ("7n", 7e-9)]
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert wire.timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "m", "12", "123456789m", "-5m", "5x"])
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
        ([(":path", "/x"), ("content-type", "text/plain")], wire.frame(b"a"), grpc.StatusCode.UNIMPLEMENTED),
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


def test_trailers_carry_status_percent_encoded_message_and_details() -> None:
    rich = status_pb2.Status(code=8, message="full")
    fields = wire.fields(wire.trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "100% full: réessayez", rich))
    values = dict(fields)
    assert values["grpc-status"] == "8"
    assert values["grpc-message"] == "100%25 full: r%C3%A9essayez"
    assert status_pb2.Status.FromString(base64.b64decode(values["grpc-status-details-bin"])) == rich
    assert wire.fields(wire.OK_TRAILERS) == [("grpc-status", "0")]
