"""The Redfish client: one request as the logged-in user, and every failure as a typed error.

`RedfishClient` logs in (a session where the service offers one, else Basic, as `auth` says),
logs in once more when a session has expired, and maps what the transport and the BMC said to
`nodefence.backends.errors` (see `backends/redfish/backend.py` for the rules). Its methods block:
the backend runs them in a worker thread under its deadline.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import redfish
import requests
from redfish.rest import v1 as rf

from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.redfish.model import Json, parse_json_strictly
from nodefence.backends.redfish.transport import (
    AnswerTooLarge,
    AnswerTruncated,
    RedfishConnection,
    ca_bundle,
    error_text,
    innermost,
)
from nodefence.backends.spec import RedfishDevice

log = logging.getLogger("nodefence.backends.redfish")


class RedfishClient:
    """Requests to one node's Redfish service, as the configured user (blocking)."""

    def __init__(self, node: str, spec: RedfishDevice) -> None:
        self.node = node
        self.device = spec.name
        self.spec = spec

    def _new_client(self) -> Any:
        spec = self.spec
        client = redfish.redfish_client(
            base_url=spec.base_url,
            username=spec.username,
            password=spec.password.reveal(),
            cafile=ca_bundle(spec),
            timeout=spec.timeouts.timeout,
            max_retry=0,
            check_connectivity=False,
        )
        return client

    def _err(self, cls: type[FenceError], message: str) -> FenceError:
        secret = self.spec.password.reveal()
        if secret:
            message = message.replace(secret, "***")
        return cls(message, node=self.node, device=self.device, address=self.spec.base_url)

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"node": self.node, "device": self.device, **fields}

    # -- blocking helpers (run in worker threads) ------------------------------------------

    def _http(
        self, conn: RedfishConnection, method: str, path: str, body: Json | None = None
    ) -> Any:
        """One HTTP request through the library; transport failures become typed errors."""
        client = conn.client
        try:
            if method == "GET":
                resp = client.get(path)
            elif method == "POST":
                resp = client.post(path, body=body)
            else:
                resp = client.delete(path)
        except rf.RetriesExhaustedError as exc:
            raise self._transport_error(conn, exc.__cause__ or exc, f"{method} {path}") from None
        if conn.http is None:  # otherwise our transport counted it when the headers came
            conn.heard_from_bmc()
        http_resp = getattr(resp, "_http_response", None)
        sent = getattr(getattr(http_resp, "request", None), "method", method)
        if sent != method:
            raise self._err(
                BmcProtocolError,
                f"Redfish {method} {path}: the BMC redirected it and it became a {sent}; "
                f"the {method} was not carried out",
            )
        return resp

    def _transport_error(
        self, conn: RedfishConnection, exc: BaseException, what: str
    ) -> FenceError:
        if isinstance(exc, AnswerTooLarge | AnswerTruncated):
            return self._err(BmcProtocolError, f"Redfish {what}: {exc}; nothing of it is used")
        if isinstance(exc, requests.exceptions.TooManyRedirects):
            return self._err(BmcProtocolError, f"Redfish {what}: the BMC redirects in a loop")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return self._err(BmcProtocolError, f"Redfish {what}: the answer was cut short")
        root = innermost(exc)
        reason = getattr(root, "verify_message", None) or getattr(root, "strerror", None)
        reason = str(reason or root)
        if isinstance(root, ssl.SSLCertVerificationError):
            return self._err(BmcTlsError, f"Redfish {what}: {self._untrusted(root, reason)}")
        if isinstance(exc, requests.exceptions.SSLError) or isinstance(root, ssl.SSLError):
            return self._err(
                BmcTlsError,
                f"Redfish {what}: TLS handshake with the BMC failed ({reason}); check that "
                f"{self.spec.base_url} serves HTTPS (scheme and port), or that the BMC accepts "
                "a TLS version and cipher this agent offers",
            )
        if isinstance(exc, requests.exceptions.ReadTimeout) and conn.answers > 0:
            return self._err(BmcTimeout, f"Redfish {what}: the BMC stopped answering ({reason})")
        if isinstance(exc, requests.exceptions.Timeout):
            return self._err(
                BmcUnreachable,
                f"Redfish {what}: no answer from the BMC within {self.spec.timeouts.timeout:g} s; "
                "check address, port and that the BMC's network is up",
            )
        if isinstance(exc, requests.exceptions.ConnectionError | OSError):
            return self._err(
                BmcUnreachable,
                f"Redfish {what}: cannot reach the BMC at {self.spec.base_url} ({reason}); "
                "check address, port, scheme and network",
            )
        return self._err(BmcProtocolError, f"Redfish {what}: {type(exc).__name__}: {reason}")

    def _untrusted(self, err: ssl.SSLCertVerificationError, reason: str) -> str:
        """What is wrong with the BMC's certificate, and what to set."""
        # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
        if err.verify_code in (62, 64):
            return (
                f"TLS: the BMC's certificate is not for {self.spec.address} ({reason}); set "
                "address to a name the certificate carries, give the BMC a certificate for "
                "this address, or set ssl_insecure to skip verification"
            )
        where = f"ca_file {self.spec.ca_file}" if self.spec.ca_file else "the system CAs"
        return (
            f"TLS: the BMC's certificate is not trusted by {where} ({reason}); set ca_file to "
            "the CA that signed it, or ssl_insecure to skip verification"
        )

    def _api(
        self, conn: RedfishConnection, method: str, path: str, body: Json | None = None
    ) -> Any:
        """A request made as the logged-in user; one fresh login when a session has expired."""
        resp = self._http(conn, method, path, body)
        if resp.status == 401 and conn.auth == "session":
            log.info("redfish session expired; logging in again", extra=self._extra(step="login"))
            conn.client.set_session_key(None)
            conn.client.set_session_location(None)
            conn.auth = None
            self._login(conn)
            resp = self._http(conn, method, path, body)
        if resp.status == 401:
            raise self._err(
                BmcAuthFailed,
                f"Redfish {method} {path}: the BMC refused the credentials of user "
                f"{self.spec.username!r} ({conn.auth or 'no'} auth); check username and password",
            )
        return resp

    def _get(self, conn: RedfishConnection, path: str, what: str) -> Json:
        resp = self._api(conn, "GET", path)
        if not 200 <= resp.status < 300:
            raise self._status_error(resp, f"{what} (GET {path})")
        return self._json(resp, f"{what} (GET {path})")

    def _json(self, resp: Any, what: str) -> Json:
        try:
            doc = parse_json_strictly(resp.read)
        except ValueError as exc:  # also UnicodeDecodeError
            raise self._err(
                BmcProtocolError, f"Redfish {what}: the answer is not valid JSON ({exc})"[:300]
            ) from None
        if not isinstance(doc, dict):
            raise self._err(BmcProtocolError, f"Redfish {what}: the answer is not a JSON object")
        return doc

    def _status_error(self, resp: Any, what: str) -> FenceError:
        status = int(resp.status)
        detail = error_text(resp)
        text = f"Redfish {what}: the BMC answered HTTP {status}" + (
            f" ({detail})" if detail else ""
        )
        if status == 403:
            return self._err(
                BmcUnsupported, text + "; the account lacks the privilege (ConfigureComponents)"
            )
        if status in (400, 404, 405, 501):
            return self._err(BmcUnsupported, text)
        return self._err(BmcProtocolError, text)

    # login -----------------------------------------------------------------------------

    def _login(self, conn: RedfishConnection) -> None:
        if conn.root is None:
            resp = self._http(conn, "GET", "/redfish/v1/")
            if resp.status == 401:
                root: Json = {}  # some services protect the root; the default URIs apply
            elif 200 <= resp.status < 300:
                root = self._json(resp, "read the service root (GET /redfish/v1/)")
            else:
                raise self._status_error(resp, "read the service root (GET /redfish/v1/)")
            conn.client.root_resp = resp  # login() would otherwise read the root once more
            sessions = (root.get("Links") or {}).get("Sessions") or {}
            if isinstance(sessions, dict) and isinstance(sessions.get("@odata.id"), str):
                conn.client.login_url = sessions["@odata.id"]
            conn.root = root
        mode = self.spec.auth
        advertised = (
            not conn.root
            or "SessionService" in conn.root
            or "Sessions" in (conn.root.get("Links") or {})
        )
        if mode == "session" and not advertised:
            raise self._err(
                BmcUnsupported,
                "Redfish service root offers no SessionService; set auth to basic or auto",
            )
        # A protected root (401) hides whether sessions exist: auto must not take a refused
        # session login for refused credentials before Basic has been tried as well.
        protected = not conn.root
        if (
            mode != "basic"
            and advertised
            and self._session_login(
                conn, fallback=mode == "auto", refused_falls_back=mode == "auto" and protected
            )
        ):
            return
        self._library_login(conn, redfish.AuthMethod.BASIC)
        conn.auth = "basic"

    def _session_login(
        self, conn: RedfishConnection, *, fallback: bool, refused_falls_back: bool = False
    ) -> bool:
        """True once logged in; False when `fallback` and the service has no working sessions
        (with `refused_falls_back`, also when the session login was answered 401)."""
        try:
            self._library_login(conn, redfish.AuthMethod.SESSION)
        except BmcAuthFailed:
            if not refused_falls_back:
                raise
            log.info(
                "redfish session login refused behind a protected service root; trying Basic",
                extra=self._extra(step="login"),
            )
            return False
        except rf.SessionCreationError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if fallback:
                log.info(
                    "redfish session login failed (%s); using Basic auth",
                    first,
                    extra=self._extra(step="login"),
                )
                return False
            raise self._err(
                BmcUnsupported,
                f"Redfish session login failed ({first}); set auth to basic or auto",
            ) from None
        if conn.client.get_session_key():
            conn.auth = "session"
            return True
        if fallback:
            log.info(
                "redfish session login returned no X-Auth-Token; using Basic auth",
                extra=self._extra(step="login"),
            )
            return False
        raise self._err(BmcProtocolError, "Redfish session login answered without X-Auth-Token")

    def _library_login(self, conn: RedfishConnection, method: str) -> None:
        kind = "session" if method == redfish.AuthMethod.SESSION else "Basic"
        try:
            conn.client.login(auth=method)
        except rf.RetriesExhaustedError as exc:
            raise self._transport_error(conn, exc.__cause__ or exc, f"{kind} login") from None
        except rf.InvalidCredentialsError:
            raise self._err(
                BmcAuthFailed,
                f"Redfish {kind} login: the BMC refused the credentials of user "
                f"{self.spec.username!r}; check username and password",
            ) from None
        except redfish.messages.RedfishPasswordChangeRequiredError:
            raise self._err(
                BmcAuthFailed,
                f"Redfish {kind} login: the BMC requires a password change for user "
                f"{self.spec.username!r} before it accepts commands",
            ) from None
        if conn.http is None:
            conn.heard_from_bmc()
