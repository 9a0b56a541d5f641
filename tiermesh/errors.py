"""One exception that carries a gRPC status: raised anywhere, turned into the
call's status at the server edge."""

from __future__ import annotations

import grpc


class StatusError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # Sent to the caller as google.rpc.RetryInfo: when trying again makes sense.
        self.retry_after_s = retry_after_s


def invalid(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message)
