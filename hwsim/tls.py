"""Throw-away TLS material for the emulators: a CA and a loopback server certificate it signs.

Tests verify the agent against `TlsFiles.ca_cert`, exactly as an operator would point
`ca_file` at their BMC vendor's CA. Calling `make_tls` twice gives two unrelated CAs, which is
how tests build "a certificate from an unknown CA".
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)  # as a real BMC's: no expiry warning in a run
# Issued a little in the past so a clock a few minutes behind still accepts the certificate.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files written by `make_tls`: the CA certificate and the server's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(
    dir: Path,
    common_name: str = "hwsim BMC",
    server_valid_for: datetime.timedelta | None = None,
) -> TlsFiles:
    """Write `ca.pem`, `server.pem`, `server-key.pem` into `dir` and return their paths.

    `server_valid_for` sets how long from now the server certificate stays valid (negative:
    it has expired), e.g. to see an expiry coming; by default it is valid for years.

    The server certificate names 127.0.0.1, ::1 and localhost (SAN IP and DNS) and is signed by
    a fresh CA; keys are ECDSA P-256 (fast to generate). `dir` is created if missing.
    """
    dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_until = now + (_VALIDITY if server_valid_for is None else server_valid_for)
    server_from = min(now - _BACKDATE, server_until - datetime.timedelta(days=30))
    san = x509.SubjectAlternativeName(
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost"),
        ]
    )
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(server_from)
        .not_valid_after(server_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_cert=dir / "ca.pem",
        server_cert=dir / "server.pem",
        server_key=dir / "server-key.pem",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """A server-side `SSLContext` (TLS 1.2+) presenting `tls.server_cert`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.server_cert, keyfile=tls.server_key)
    return context
