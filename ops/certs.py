"""`tiermesh certs` (`make certs`): a local CA and the certificates the mesh uses, for
the local mesh and the tests. Production takes them from Kubernetes secrets."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey
LOCAL_NAMES = ("localhost", "tiermesh-mesh")
LOCAL_IPS = ("127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: Key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_ca(common_name: str, days: int = 365) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, Key],
    common_name: str,
    server: bool,
    client: bool,
    names: tuple[str, ...] = LOCAL_NAMES,
    days: int = 90,
) -> tuple[x509.Certificate, Key]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOCAL_IPS] if server else []
    cert = (
        _builder(common_name, ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(out: Path, stem: str, cert: x509.Certificate, key: Key | None = None) -> None:
    (out / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path = out / f"{stem}.key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)


def write_local_certs(out: Path) -> list[Path]:
    """ca.crt; mesh.* (router ↔ tiers, both ends: server and client auth); edge.*
    (the router to game clients); client.* (a game client, for mutual TLS at the edge)."""
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca("tiermesh local CA")
    _write(out, "ca", ca[0])
    _write(out, "mesh", *issue(ca, "tiermesh-mesh", server=True, client=True))
    _write(out, "edge", *issue(ca, "tiermesh-router", server=True, client=False))
    _write(out, "client", *issue(ca, "game-client", server=False, client=True, names=("game-client",)))
    return sorted(out.iterdir())
