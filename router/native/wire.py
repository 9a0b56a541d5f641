"""gRPC over HTTP/2, the parts the native edge writes itself: request headers to metadata
and deadline, gRPC's rules for a request, the request message out of its frame (inflated
within the size limit), response messages into frames, and the status trailers.
https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2

from tiermesh.errors import StatusError, invalid

Fields = list[tuple[str, str]]
Metadata = list[tuple[str, str | bytes]]

TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Headers gRPC itself uses; the rest are the caller's metadata.
RESERVED = frozenset({"te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
# zlib's window bits per grpc-encoding: gzip's wrapper, and zlib's (gRPC's "deflate").
WINDOW_BITS = {"gzip": 31, "deflate": 15}
CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})


class HttpRefusal(StatusError):
    """A request that breaks gRPC's rules over HTTP/2: its answer carries an HTTP status
    besides the gRPC one (405 for a method other than POST, 415 for a content type that
    is not gRPC's), as the protocol asks of a server."""

    def __init__(self, http_status: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.http_status = http_status


def fields(block: bytes) -> Fields:
    """Header fields from nghttp2's flat block, "name\\0value\\0..." (HTTP/2 allows no
    NUL in either)."""
    parts = block.decode("latin-1").split("\0")
    return list(zip(parts[0:-1:2], parts[1:-1:2], strict=True))


def flat(headers: Iterable[tuple[str, object]]) -> bytes:
    """Header fields in nghttp2's flat form (what `fields` reads)."""
    return "".join(f"{name}\0{value}\0" for name, value in headers).encode("latin-1")


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """What a request's headers say, read in one pass (each header scan is first-token time)."""

    metadata: Metadata  # the caller's, as grpc.aio hands it over: `-bin` values decoded
    timeout: float | None  # seconds the caller gives the call; None: no deadline
    content_type: str = ""
    encoding: str = "identity"
    method: str = ""
    te: str = ""


def request(headers: Fields) -> RequestHeaders:
    """What a request's headers say; INVALID_ARGUMENT when the caller's metadata is
    malformed (a grpc-timeout that is not one, a `-bin` value that is not base64)."""
    metadata: Metadata = []
    seconds, content_type, encoding, method, te = None, "", "identity", "", ""
    for name, value in headers:
        if name.startswith(":"):
            if name == ":method":
                method = value
            continue
        if name == "grpc-timeout":
            seconds = timeout(value)
        elif name == "content-type":
            content_type = value
        elif name == "grpc-encoding":
            encoding = value
        elif name == "te":
            te = value
        elif name in RESERVED:
            continue
        elif name.endswith("-bin"):
            metadata.append((name, binary(name, value)))
        else:
            metadata.append((name, value))
    return RequestHeaders(metadata, seconds, content_type, encoding, method, te)


def binary(name: str, value: str) -> bytes:
    """A `-bin` header's value: base64, padded or not."""
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except binascii.Error:
        raise invalid(f"metadata {name[:64]!r} is not base64") from None


def header(headers: Fields, name: str) -> str | None:
    return next((value for key, value in headers if key == name), None)


def timeout(value: str) -> float:
    """`grpc-timeout`'s value in seconds."""
    amount, unit = value[:-1], value[-1:]
    if not (amount.isascii() and amount.isdigit() and len(amount) <= 8 and unit in TIMEOUT_UNITS):
        raise invalid(f"malformed grpc-timeout {value[:32]!r}")
    return int(amount) * TIMEOUT_UNITS[unit]


def check(headers: RequestHeaders) -> None:
    """gRPC's rules for a request over HTTP/2: POST, its content type, `te: trailers`."""
    if headers.method != "POST":
        raise HttpRefusal(
            405, grpc.StatusCode.UNIMPLEMENTED, f"gRPC calls are POST, not {headers.method[:16]!r}"
        )
    if headers.content_type.partition(";")[0].strip() not in CONTENT_TYPES:
        raise HttpRefusal(
            415, grpc.StatusCode.UNIMPLEMENTED, f"content-type {headers.content_type[:64]!r} is not gRPC"
        )
    if headers.te != "trailers":
        raise invalid("a gRPC request carries te: trailers")


def message(headers: RequestHeaders, body: bytes | None, max_bytes: int) -> bytes:
    """The one request message of a unary request, after gRPC's rules (`check`). `body`
    is None when it ran past the size limit (the edge stopped reading it). A compressed
    message is inflated no further than `max_bytes`: its work is bounded by the limit,
    not by what the caller claims."""
    check(headers)
    if body is None:
        raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes")
    if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise invalid("a unary call carries exactly one request message")
    if len(body) - 5 > max_bytes:
        raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes")
    payload = body[5:]
    if body[0]:
        if headers.encoding not in WINDOW_BITS:
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {headers.encoding[:32]!r} is not supported"
            )
        return inflate(payload, WINDOW_BITS[headers.encoding], max_bytes)
    return payload


def inflate(packed: bytes, window_bits: int, max_bytes: int) -> bytes:
    """`packed` inflated, stopping as soon as it would pass `max_bytes`
    (RESOURCE_EXHAUSTED). gzip may hold several members, one after another."""
    out = b""
    while True:
        inflater = zlib.decompressobj(window_bits)
        try:
            out += inflater.decompress(packed, max_bytes + 1 - len(out))
        except zlib.error as e:
            raise invalid(f"cannot decompress the request: {e}") from None
        if len(out) > max_bytes:
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes once decompressed"
            )
        if not inflater.eof:
            raise invalid("cannot decompress the request: it is cut short")
        packed = inflater.unused_data
        if not packed:
            return out
        if window_bits != WINDOW_BITS["gzip"]:
            raise invalid("cannot decompress the request: bytes after its end")


def frame(payload: bytes) -> bytes:
    """A response message as it goes on the wire: uncompressed flag, length, bytes."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def percent_encoded(text: str) -> str:
    """grpc-message's encoding: printable ASCII as is, every other byte (and '%') as %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode("utf-8"))


def trailers(code: grpc.StatusCode, text: str = "", status: status_pb2.Status | None = None) -> bytes:
    """The status trailers in nghttp2's flat form. `status`, the rich google.rpc.Status,
    rides in grpc-status-details-bin (RetryInfo)."""
    out = [("grpc-status", str(code.value[0]))]
    if text:
        out.append(("grpc-message", percent_encoded(text)))
    if status is not None:
        out.append(("grpc-status-details-bin", base64.b64encode(status.SerializeToString()).decode()))
    return flat(out)


OK_TRAILERS = trailers(grpc.StatusCode.OK)
