"""How long a BMC's TLS certificate is still valid: one handshake, the certificate read.

Trust is not judged here (the Redfish backend's own connection verifies the certificate and
reports a failure as `BmcTlsError`); this only reads the certificate the BMC presents, so
that an expiry can be seen weeks before it breaks fencing, also on devices set to
`ssl_insecure`. Nothing is sent but the TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from cryptography import x509

from nodefence.backends.errors import BmcTlsError, BmcUnreachable, FenceError

_CONTEXT: ssl.SSLContext | None = None


def _context() -> ssl.SSLContext:
    """One client context for every check (building one loads the system CAs: ~50 ms)."""
    global _CONTEXT
    if _CONTEXT is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # read, not trust: see the module doc
        _CONTEXT = context
    return _CONTEXT


async def certificate_days_left(
    host: str, port: int, *, timeout: float, now: float | None = None
) -> float:
    """Days until the certificate `host:port` presents expires (negative: expired).

    Raises `BmcUnreachable` when nothing answers within `timeout`, `BmcTlsError` when no
    certificate could be read (e.g. plain HTTP on that port).
    """
    context = _context()
    where = f"{host}:{port}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except TimeoutError:
        raise BmcUnreachable(
            f"TLS certificate check: no answer within {timeout:g} s", address=where
        ) from None
    except ssl.SSLError as err:
        raise BmcTlsError(
            f"TLS certificate check: handshake failed ({err.reason or err})", address=where
        ) from None
    except OSError as err:
        raise BmcUnreachable(
            f"TLS certificate check: cannot connect ({err.strerror or err})", address=where
        ) from None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            raise BmcTlsError("TLS certificate check: the BMC presented no certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise BmcTlsError("TLS certificate check: the certificate cannot be read") from None
        expires = cert.not_valid_after_utc.timestamp()
        return (expires - (time.time() if now is None else now)) / 86400.0
    except FenceError as err:
        err.address = err.address or where
        raise
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
