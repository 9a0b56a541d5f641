"""gRPC credentials from TlsSettings: one place that reads the PEM files, so every
server and channel of the mesh does TLS (or plaintext) the same way."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, model_validator


class TlsSettings(BaseModel):
    """PEM files (Kubernetes secrets in the chart; `make certs` locally). Serving: cert
    and key, and with require_client_cert the peer must show a certificate signed by
    `ca` (mutual TLS). Dialling: `ca` verifies the server; cert and key identify us."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False
    # The name on the server's certificate, when dialling by IP (dns:/// replicas).
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca or (self.cert and self.key))

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both cert and key (or neither)")
        if self.require_client_cert and not self.ca:
            raise ValueError("require_client_cert needs a ca to verify client certificates with")
        return self


Options = Sequence[tuple[str, Any]]


def read_pem(path: str) -> bytes | None:
    """A PEM file's bytes; None for an unset path."""
    return Path(path).read_bytes() if path else None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """None: serve plaintext."""
    if not (tls.cert and tls.key):
        return None
    key, cert = read_pem(tls.key), read_pem(tls.cert)
    assert key is not None
    assert cert is not None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=read_pem(tls.ca), require_client_auth=tls.require_client_cert
    )


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The same server side for a server that does its own HTTP/2 (the router's native
    edge): ALPN h2, and the client's certificate checked against `ca` when required."""
    if not (tls.cert and tls.key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca:
        context.load_verify_locations(tls.ca)
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def client_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The same client side for a client that does its own HTTP/2 (the router's native
    tier client): `ca` verifies the server, cert and key identify us, ALPN h2."""
    context = ssl.create_default_context(cafile=tls.ca or None)
    if tls.cert and tls.key:
        context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    return context


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca),
        private_key=read_pem(tls.key),
        certificate_chain=read_pem(tls.cert),
    )


def channel_options(tls: TlsSettings | None, options: Options = ()) -> list[tuple[str, Any]]:
    named = [("grpc.ssl_target_name_override", tls.server_name)] if tls and tls.server_name else []
    return [*options, *named]


def aio_channel(address: str, tls: TlsSettings | None = None, options: Options = ()) -> grpc.aio.Channel:
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=channel_options(tls, options))


def sync_channel(address: str, tls: TlsSettings | None = None) -> grpc.Channel:
    if tls is None or not tls.enabled:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(tls), options=channel_options(tls))
