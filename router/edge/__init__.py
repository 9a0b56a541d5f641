"""Where callers reach the router: one edge, chosen once from configuration
(`data_path.edge`). Both serve the same servicer; the grpc.aio server always runs, for
what the native edge relays to it (health, reflection, jobs, sessions, Converse).

- `grpc`: grpc.aio's server takes callers itself (no C needed at start).
- `native`: nghttp2 in C frames callers (router/edge/native.py) and answers Generate
  itself; the grpc.aio server listens on a private Unix socket behind it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.auth import auth_interceptors, authenticator
from router.server import MESH_SERVICE, MeshServicer
from router.settings import CallerLimits, DataPathSettings, RouterConfig
from tiermesh.serving import Serving, start_grpc_server
from tiermesh.v1 import mesh_pb2_grpc


class Edge(Protocol):
    @property
    def port(self) -> int: ...

    async def close(self, grace: float | None) -> None:
        """Refuse new calls, let open ones finish within `grace`."""
        ...


@dataclass(frozen=True)
class Coalescing:
    """Where text deltas that arrive together leave as one message, decided once: at the
    servicer (a reader task ahead of the edge's writes: grpc.aio's plane) or in the
    native tier client (what arrived in one read, or piled up behind a slow caller): on
    the native plane the edge's writes never wait, so a reader task would only cost each
    message a hop between tasks."""

    servicer: bool
    tier_client: bool


def coalescing(data_path: DataPathSettings) -> Coalescing:
    native = data_path.edge == data_path.tier_client == "native"
    return Coalescing(
        servicer=data_path.coalesce and not native,
        tier_client=data_path.coalesce and data_path.tier_client == "native",
    )


def grpc_edge_options(data_path: DataPathSettings, limits: CallerLimits) -> list[tuple[str, int]]:
    """gRPC core's server options for what callers reach on the grpc.aio server: caller
    keepalive and `router.limits`, as far as gRPC core has them (docs/operations.md)."""
    return [
        ("grpc.keepalive_time_ms", int(data_path.caller_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(data_path.caller_keepalive_timeout_s * 1000)),
        ("grpc.max_metadata_size", limits.max_header_list_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_list_bytes),
        ("grpc.server_handshake_timeout_ms", int(limits.preface_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
    ]


@dataclass
class GrpcEdge:
    """grpc.aio's server as the edge."""

    serving: Serving

    @property
    def port(self) -> int:
        return self.serving.port

    async def close(self, grace: float | None) -> None:
        """Nothing of its own: the router stops the grpc.aio server after its edge."""


async def start_edge(config: RouterConfig, servicer: MeshServicer) -> tuple[Serving, Edge]:
    """The grpc.aio server and the edge callers reach, started."""
    router, data_path = config.router, config.router.data_path
    reuse_port = data_path.workers > 1
    native = data_path.edge == "native"
    # Behind a native edge, grpc.aio serves what the edge relays, on a private socket.
    internal = Path(tempfile.mkdtemp(prefix="tiermesh-router-")) / "grpc.sock" if native else None
    serving = await start_grpc_server(
        f"unix:{internal}" if internal is not None else router.listen,
        lambda server: mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server),
        [MESH_SERVICE],
        max_message_bytes=router.max_message_bytes,
        tls=None if native else config.edge_tls,
        interceptors=auth_interceptors(config.auth),
        reuse_port=reuse_port and not native,
        options=grpc_edge_options(data_path, router.limits),
    )
    if internal is None:
        return serving, GrpcEdge(serving)
    from router.edge.native import NativeEdge  # loads the C part

    edge = NativeEdge(
        servicer,
        str(internal),
        router.max_message_bytes,
        authenticator(config.auth),
        limits=router.limits,
        keepalive_s=data_path.caller_keepalive_s,
        keepalive_timeout_s=data_path.caller_keepalive_timeout_s,
    )
    try:
        await edge.start(router.listen, config.edge_tls, reuse_port)
    except BaseException:  # e.g. the port is taken: leave nothing running behind
        await serving.server.stop(None)
        shutil.rmtree(internal.parent, ignore_errors=True)
        raise
    return serving, edge
