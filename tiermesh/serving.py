"""What every tiermesh gRPC server has: health, reflection, size limits, metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import grpc
import uvloop
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tiermesh.errors import StatusError
from tiermesh.exposition import serve_metrics
from tiermesh.tls import TlsSettings, server_credentials

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """gRPC's health service, whose Watch streams end (OK) when their server stops.

    A Watch streams until its caller leaves. Still open when the server stops, it is
    cancelled by grpc.aio; if its caller leaves at that moment too (`tiermesh down`
    stops the router, the Watch's caller, beside its tiers), grpc.aio now and then logs
    the cancellation as an unhandled CancelledError with a traceback. Ended here first,
    nothing is open to cancel; the caller has seen NOT_SERVING, and watches again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stopping = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({watch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, stopping):
                task.cancel()
            await asyncio.gather(watch, stopping, return_exceptions=True)
        if not watch.cancelled() and (error := watch.exception()) is not None:
            raise error

    def end_watches(self) -> None:
        self._stopping.set()


@dataclass
class Serving:
    server: grpc.aio.Server
    health: Health
    port: int
    service_names: Sequence[str]

    async def set_serving(self, serving: bool) -> None:
        """Overall health ("") and every named service move together."""
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING to every watcher, their Watch streams ended, then the server's own
        stop: calls in flight get `grace` to finish, new ones are refused."""
        await self.set_serving(False)
        self.health.end_watches()
        await self.server.stop(grace)


async def start_grpc_server(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    max_message_bytes: int = 1 << 20,
    serving: bool = True,
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
    min_ping_interval_ms: int = 15_000,
    options: Sequence[tuple[str, int]] = (),
) -> Serving:
    """Start a grpc.aio server with `register`ed services, health and reflection.

    Health starts NOT_SERVING when `serving` is False (an engine still loading).
    A request larger than `max_message_bytes` fails with RESOURCE_EXHAUSTED in gRPC
    itself, before any handler runs. With `reuse_port`, several processes may listen on
    one port (the kernel spreads connections); otherwise a busy port is an error.
    `options` are more of gRPC's server arguments.
    """
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
            # The router pings its tiers every 30 s to keep idle streams alive. gRPC's
            # default (one ping per 5 min without data) answers that with a GOAWAY,
            # killing every stream on the connection.
            ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            *options,
        ],
    )
    register(server)
    health_servicer = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(tls) if tls is not None else None
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    serving_state = Serving(server, health_servicer, port, service_names)
    await serving_state.set_serving(serving)
    return serving_state


async def start_metrics(port: int, listen: str = "127.0.0.1:0") -> web.AppRunner | None:
    """Expose the process's Prometheus registry on http://host:port/metrics (0: off),
    on the interface the service itself listens on (`listen`'s host), from the event
    loop (tiermesh/exposition.py says why); `cleanup()` the runner to stop it."""
    if not port:
        return None
    host = listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    return await serve_metrics(host, port)


def run(main: Coroutine[Any, Any, None], event_loop: Literal["uvloop", "asyncio"] = "asyncio") -> None:
    """Run a service's main coroutine on the chosen event loop."""
    if event_loop == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM (the process's cue to drain and stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]


def status_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """A unary handler whose `StatusError`s end the call with that status."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: Request, context: grpc.aio.ServicerContext[Any, Any]) -> Response:
        try:
            return await handler(self, request, context)
        except StatusError as e:
            await context.abort(e.code, e.message)
            raise AssertionError("unreachable: abort raises") from None

    return wrapped
