"""Client authentication at the router's edge: `x-api-key: <key>` (looked up by its
SHA-256) or `authorization: Bearer <JWT>`. A server interceptor checks every public
call before its handler runs (UNAUTHENTICATED otherwise) and records who the client
is for the handler: that id, never a self-declared `x-client-id`, keys the quotas."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import jwt

from router.settings import AuthSettings
from tiermesh.errors import StatusError

# The authenticated client of the call being handled (set by the interceptor, which
# runs in the call's own task, before its handler).
CLIENT: ContextVar[str | None] = ContextVar("tiermesh_client", default=None)
PUBLIC_PREFIX = "/tiermesh.v1.Mesh/"
API_KEY_HEADER = "x-api-key"


def unauthenticated(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.UNAUTHENTICATED, message)


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = {key.sha256: key.client_id for key in settings.api_keys}
        self._jwt = settings.jwt
        self._jwt_key: str | bytes = ""
        if self._jwt is not None:
            self._jwt_key = (
                Path(self._jwt.public_key_file).read_bytes()
                if self._jwt.public_key_file
                else self._jwt.secret
            )
            if not self._jwt_key:
                raise ValueError("auth.jwt needs a secret or a public_key_file")

    def authenticate(self, metadata: Sequence[tuple[str, Any]] | None) -> str:
        """The client id, or UNAUTHENTICATED saying what was wrong."""
        headers = {key: value for key, value in metadata or () if isinstance(value, str)}
        if api_key := headers.get(API_KEY_HEADER):
            client = self._keys.get(hashlib.sha256(api_key.encode()).hexdigest())
            if client is None:
                raise unauthenticated("unknown API key")
            return client
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and self._jwt is not None:
            return self._verify(bearer[7:].strip())
        raise unauthenticated(f"missing credentials: send {API_KEY_HEADER} or authorization: Bearer <JWT>")

    def _verify(self, token: str) -> str:
        settings = self._jwt
        assert settings is not None
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=settings.algorithms,
                audience=settings.audience or None,
                issuer=settings.issuer or None,
                options={"require": ["exp"]},
            )
        except jwt.PyJWTError as e:
            raise unauthenticated(f"invalid token: {e}") from None
        client = claims.get(settings.client_claim)
        if not isinstance(client, str) or not client:
            raise unauthenticated(f"the token has no {settings.client_claim!r} claim naming the client")
        return client


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _denied(handler: Handler, error: StatusError) -> Handler:
    """A handler of the same shape as `handler` that only refuses the call."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.code, error.message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.code, error.message)
        yield  # an async generator, as streaming handlers are

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        # Health and reflection stay open: probes and grpcurl discovery carry no keys.
        if handler is None or not details.method.startswith(PUBLIC_PREFIX):
            return handler
        try:
            CLIENT.set(self._authenticator.authenticate(details.invocation_metadata))
        except StatusError as e:
            return _denied(handler, e)
        return handler


def authenticator(settings: AuthSettings) -> Authenticator | None:
    """The edge's authenticator; None when callers need no credentials."""
    return Authenticator(settings) if settings.required else None


def auth_interceptors(settings: AuthSettings) -> list[grpc.aio.ServerInterceptor]:
    checker = authenticator(settings)
    return [AuthInterceptor(checker)] if checker is not None else []


def client_quotas(settings: AuthSettings) -> Mapping[str, tuple[float, int]]:
    """Client id → (calls/s, burst): API keys' own quotas, then auth.quotas."""
    quotas = {q: (quota.rate_per_s, quota.burst) for q, quota in settings.quotas.items()}
    for key in settings.api_keys:
        if key.rate_per_s is not None:
            quotas[key.client_id] = (key.rate_per_s, key.burst or max(1, int(key.rate_per_s)))
    return quotas
