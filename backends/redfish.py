"""Redfish power backend on the DMTF `redfish` library (python-redfish-library).

Library defaults this module overrides, on purpose:
- `max_retry` defaults to 10 with a 1 s sleep between attempts: against a dead port one request
  takes ~10 s. We pass `max_retry=0`: one call is one attempt; retrying is the topology's job.
- Without `cafile` the library sends `verify=False`, i.e. accepts any certificate. We always
  pass a CA bundle unless `ssl_insecure` is set: `ca_file`, else the system bundle.
- `check_connectivity=True` would read the service root inside the constructor, outside our
  deadline and error mapping: we construct without I/O and read the root ourselves.
- The requests session trusts the environment (proxies, netrc, CA bundle variables): BMC
  traffic goes direct, so we turn that off.
- The library's DEBUG records carry session tokens and request bodies: we drop them.
- requests reads a whole answer into memory, however large: our transport adapter refuses an
  answer over `MAX_ANSWER_BYTES` (by its Content-Length, else while reading).
- The library decodes answers as UTF-8 ignoring bad bytes (`"O\\xffff"` would read "Off") and
  takes the last of duplicate JSON keys: we parse the raw bytes strictly ourselves.
- requests turns a POST answered by 301/302/303 into a GET of the new location, whose 200
  would read as an accepted reset: a redirected POST is refused.

Errors: nothing received in a call (no route, refused, reset before an answer, silent past
the deadline) is `BmcUnreachable`, and only that: it is what lets a channel be skipped in a
proof of Off and what the watchdog self-fence rule needs. A call that received an answer (a
status line) but did not finish in time is `BmcTimeout`; an answer cut short is
`BmcProtocolError`. A TLS failure (certificate from an unknown CA or not for this address, TLS
to a plain-HTTP port, handshake refused) is `BmcTlsError`: the BMC answered, but not over a
channel we trust, and the message says what to set (ca_file, address, scheme/port or
ssl_insecure). 401 is `BmcAuthFailed` (after one fresh login, for an expired session),
403/404/400 on what we need is `BmcUnsupported`, 5xx and unparseable answers are
`BmcProtocolError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import redfish
import requests
import urllib3
from redfish.rest import v1 as rf
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from backends.base import CheckResult, PowerBackend, PowerState
from backends.deadline import run_bounded
from backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from backends.spec import RedfishDevice

T = TypeVar("T")
Json = dict[str, Any]

# Resource.ResetType: ForceOff is the only value that means "off, immediately". GracefulShutdown
# waits for the OS, PushPowerButton is vendor-defined (usually an ACPI request), and the restart
# and cycle values end powered on. So there is nothing to fall back to for fencing.
HARD_OFF_RESET_TYPES = ("ForceOff",)
ON_RESET_TYPES = ("On", "ForceOn")
_RESET = "#ComputerSystem.Reset"
# Far above any real resource (a system is a few kB, a collection of thousands of members a
# few hundred kB), far below what would hurt the agent's memory.
MAX_ANSWER_BYTES = 4 << 20
_REDFISH_POWER_STATES = ("On", "Off", "PoweringOn", "PoweringOff", "Paused")

log = logging.getLogger("nodefence.backends.redfish")


class _NoLibraryDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("redfish.rest.v1").addFilter(_NoLibraryDebug())


# --- pure decisions ------------------------------------------------------------------------


def power_state_from(value: object) -> PowerState:
    """Map Redfish `PowerState`: only "Off" is OFF; PoweringOff is still ON (not yet proven)."""
    if value == "Off":
        return PowerState.OFF
    if value in ("On", "PoweringOn", "PoweringOff"):
        return PowerState.ON
    return PowerState.UNKNOWN


def choose_reset_type(allowed: Sequence[str] | None, preferred: Sequence[str]) -> str | None:
    """The first of `preferred` the service allows; `allowed=None` (not advertised) means the
    first preferred value; `None` when the service allows none of them."""
    if allowed is None:
        return preferred[0]
    return next((p for p in preferred if p in allowed), None)


def describe_system(doc: Json) -> str:
    """`Id=.. Name=.. UUID=..` of a ComputerSystem, for messages."""
    return " ".join(f"{k}={doc.get(k)}" for k in ("Id", "Name", "UUID") if doc.get(k))


def select_system(
    spec: RedfishDevice, systems: Sequence[tuple[str, Json]], *, node: str, device: str
) -> str:
    """The URI of the system `spec` selects among `(uri, document)` pairs of the collection.

    By `system_id`, `system_name` or `system_uuid` (first set wins; UUIDs compare case-blind),
    else the only member. Raise `BmcUnsupported` naming the members when nothing (or more
    than one) matches.
    """
    if not systems:
        raise BmcUnsupported("the Redfish service lists no systems", node=node, device=device)
    listing = "; ".join(
        f"{uri} ({describe_system(doc)})".replace(" ()", "") for uri, doc in systems
    )
    if spec.system_id is not None:
        field, want = "Id", spec.system_id
    elif spec.system_name is not None:
        field, want = "Name", spec.system_name
    elif spec.system_uuid is not None:
        field, want = "UUID", spec.system_uuid.lower()
    else:
        if len(systems) == 1:
            return systems[0][0]
        raise BmcUnsupported(
            f"the Redfish service has {len(systems)} systems and none is selected: {listing}; "
            "set systems_uri, system_id, system_name or system_uuid",
            node=node,
            device=device,
        )

    def value(doc: Json) -> str:
        got = str(doc.get(field, ""))
        return got.lower() if field == "UUID" else got

    found = [uri for uri, doc in systems if value(doc) == want]
    if len(found) == 1:
        return found[0]
    problem = "no system" if not found else f"{len(found)} systems"
    raise BmcUnsupported(
        f"{problem} with {field} {want!r} on the Redfish service; it has: {listing}",
        node=node,
        device=device,
    )


def ca_bundle(spec: RedfishDevice) -> str | None:
    """The CA file the BMC's certificate is verified with; `None` only for plain HTTP or
    `ssl_insecure` (the library then skips verification)."""
    if spec.scheme != "https" or spec.ssl_insecure:
        return None
    if spec.ca_file:
        return spec.ca_file
    system = ssl.get_default_verify_paths().cafile  # honours SSL_CERT_FILE
    return system if system and os.path.isfile(system) else DEFAULT_CA_BUNDLE_PATH


def _innermost(exc: BaseException) -> BaseException:
    """The root of a requests/urllib3 wrapping chain (MaxRetryError.reason, args, __cause__)."""
    seen = {id(exc)}
    while True:
        candidates = (getattr(exc, "reason", None), *exc.args, exc.__cause__)
        nxt = next((c for c in candidates if isinstance(c, BaseException)), None)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _error_text(resp: Any) -> str:
    """The first human message of a Redfish error body, if there is one."""
    try:
        err = resp.dict.get("error", {})
        infos = err.get("@Message.ExtendedInfo") or []
        text = (infos[0].get("Message") if infos else None) or err.get("message") or ""
    except Exception:  # any shape at all may come back from a failing BMC
        return ""
    return str(text)[:200]


class AnswerTooLarge(requests.exceptions.RequestException):
    """The BMC's answer is larger than `MAX_ANSWER_BYTES`; it was not read to the end."""


class AnswerTruncated(requests.exceptions.RequestException):
    """The BMC closed the connection before the end of its answer (short of Content-Length)."""


class _BoundedAdapter(HTTPAdapter):
    """requests' transport, reading at most `limit` bytes of any answer into memory.

    `heard()` is called as soon as an answer's status line and headers are in: from then on
    the BMC has answered, whatever happens to the rest of the answer.
    """

    def __init__(self, limit: int, heard: Callable[[], None]) -> None:
        super().__init__(max_retries=0)
        self.limit = limit
        self._heard = heard

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        # `stream` is ignored on purpose: the body is always read here, bounded.
        resp = super().send(request, stream=True, **kwargs)
        self._heard()
        declared = resp.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > self.limit:
            resp.close()
            raise AnswerTooLarge(
                f"the answer announces {int(declared)} bytes, over the {self.limit}-byte limit",
                request=request,
            )
        try:
            body = resp.raw.read(self.limit + 1, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            resp.close()
            raise requests.exceptions.ReadTimeout(exc, request=request) from exc
        except urllib3.exceptions.IncompleteRead as exc:
            resp.close()
            raise AnswerTruncated(f"the answer was cut short ({exc})", request=request) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The status line and headers came: a reset or broken stream now is an answer
            # cut short, not a BMC that never answered.
            resp.close()
            raise AnswerTruncated(
                f"the answer was cut short ({type(exc).__name__})", request=request
            ) from exc
        if len(body) > self.limit:
            resp.close()
            raise AnswerTooLarge(f"the answer is over the {self.limit}-byte limit", request=request)
        resp._content = body
        resp._content_consumed = True  # type: ignore[attr-defined]
        resp.raw.release_conn()
        return resp


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> Json:
    doc: Json = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate JSON key {key!r}")
        doc[key] = value
    return doc


def parse_json_strictly(raw: bytes | str | None) -> Any:
    """Parse an answer body: strict UTF-8, no duplicate keys; `ValueError` on any flaw."""
    if raw is None:
        raise ValueError("no body")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _shown(value: object) -> str:
    """A short repr of a value from the BMC, for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the connection ------------------------------------------------------------------------


class _Conn:
    """One library client and what was learned through it (auth mode, root, system URI).

    Used by one call at a time. After a deadline overrun the backend abandons it: the thread
    still running in it logs out when it finishes, so no session is left open on the BMC.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        # The library's requests session (a private attribute): we tune it and make sure it is
        # closed even when logout fails half-way.
        session = getattr(client, "_session", None)
        self.http = session if isinstance(session, requests.Session) else None
        if self.http is not None:
            self.http.trust_env = False
            adapter = _BoundedAdapter(MAX_ANSWER_BYTES, self.heard_from_bmc)
            self.http.mount("https://", adapter)
            self.http.mount("http://", adapter)
        self.auth: Literal["session", "basic"] | None = None
        self.root: Json | None = None
        self.system_uri: str | None = None
        self.answers = 0  # HTTP answers (status lines) received during the current call
        self._guard = threading.Lock()
        self._busy = False
        self._abandoned = False

    def heard_from_bmc(self) -> None:
        """An answer's status line arrived (called from the transport)."""
        self.answers += 1

    def run(self, fn: Callable[[], T]) -> T:
        with self._guard:
            self._busy = True
        self.answers = 0
        try:
            return fn()
        finally:
            with self._guard:
                self._busy = False
                abandoned = self._abandoned
            if abandoned:
                self.logout()

    @property
    def busy(self) -> bool:
        with self._guard:
            return self._busy

    def abandon(self) -> None:
        with self._guard:
            self._abandoned = True
            busy = self._busy
        if not busy:
            threading.Thread(target=self.logout, name="redfish-logout", daemon=True).start()

    def logout(self) -> None:
        """End the session on the BMC and close the sockets; best effort, never raises."""
        try:
            self.client.logout()
        except Exception as exc:  # the client is thrown away either way
            log.debug("redfish logout failed: %s", type(exc).__name__)
        finally:
            if self.http is not None:
                self.http.close()


# --- the backend ---------------------------------------------------------------------------


class RedfishBackend(PowerBackend):
    """Power control of one node through a Redfish service's ComputerSystem.Reset action."""

    def __init__(self, node: str, spec: RedfishDevice) -> None:
        self.node = node
        self.device = spec.name
        self.spec = spec
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        if spec.scheme == "https" and spec.ssl_insecure:
            log.warning(
                "TLS verification of the BMC is disabled (ssl_insecure)",
                extra={"node": node, "device": spec.name},
            )

    # -- the async interface --------------------------------------------------------------

    async def power_state(self) -> PowerState:
        """GET the system; only `PowerState: Off` reads as OFF."""
        return await self._call("power status", self._state_sync)

    async def power_off(self) -> None:
        """POST ComputerSystem.Reset with ForceOff (never a graceful ResetType)."""
        kind = await self._call("power off", lambda c: self._reset_sync(c, "off"))
        log.info("redfish reset sent", extra=self._extra(step="off", reset_type=kind))

    async def power_on(self) -> None:
        """POST ComputerSystem.Reset with On (or ForceOn)."""
        kind = await self._call("power on", lambda c: self._reset_sync(c, "on"))
        log.info("redfish reset sent", extra=self._extra(step="on", reset_type=kind))

    async def check(self) -> CheckResult:
        """Log in, find the system, read its power state and whether it offers ForceOff."""
        try:
            state, supported, detail = await self._call("check", self._check_sync)
        except BmcUnreachable as err:
            return CheckResult(False, False, PowerState.UNKNOWN, False, str(err), err.reason)
        except BmcAuthFailed as err:
            return CheckResult(True, False, PowerState.UNKNOWN, False, str(err), err.reason)
        except FenceError as err:
            authenticated = self._conn is not None and self._conn.auth is not None
            return CheckResult(True, authenticated, PowerState.UNKNOWN, False, str(err), err.reason)
        return CheckResult(True, True, state, supported, detail, "" if supported else "unsupported")

    async def close(self) -> None:
        """Log out (DELETE the session); best effort and bounded, never raises."""
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await run_bounded(
                conn.logout,
                timeout=self.spec.timeouts.timeout,
                node=self.node,
                device=self.device,
                what="Redfish logout",
                address=self.spec.base_url,
            )
        except FenceError as err:
            log.info("redfish logout did not finish: %s", err, extra=self._extra(step="close"))

    # -- running one call ---------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[_Conn], T]) -> T:
        timeout = self.spec.timeouts.timeout
        async with self._lock:
            if self._conn is None:
                self._conn = _Conn(self._new_client())
            conn = self._conn
            try:
                return await run_bounded(
                    lambda: conn.run(lambda: self._guarded(conn, fn, what)),
                    timeout=timeout,
                    node=self.node,
                    device=self.device,
                    what=f"Redfish {what}",
                    address=self.spec.base_url,
                )
            except BmcTimeout:
                if not conn.busy:
                    raise  # raised by the call itself, not by the deadline
                # The worker thread is still inside the library: leave this client to it (it
                # logs out when done) and start afresh next time.
                self._conn = None
                conn.abandon()
                if conn.answers == 0:
                    raise self._err(
                        BmcUnreachable,
                        f"Redfish {what}: nothing received from the BMC within {timeout:g} s; "
                        "check address, port and that the BMC's network is up",
                    ) from None
                raise self._err(
                    BmcTimeout,
                    f"Redfish {what}: the BMC answered but the operation did not finish within "
                    f"{timeout:g} s",
                ) from None

    def _guarded(self, conn: _Conn, fn: Callable[[_Conn], T], what: str) -> T:
        try:
            return fn(conn)
        except FenceError as err:
            err.address = err.address or self.spec.base_url  # e.g. from select_system
            raise
        except rf.JsonDecodingError:
            raise self._err(
                BmcProtocolError, f"Redfish {what}: the BMC answered non-JSON"
            ) from None
        except Exception as exc:  # the library raises bare exceptions of many kinds
            raise self._err(
                BmcProtocolError,
                f"Redfish {what}: unexpected {type(exc).__name__} in the Redfish client: {exc}",
            ) from exc

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

    def _http(self, conn: _Conn, method: str, path: str, body: Json | None = None) -> Any:
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

    def _transport_error(self, conn: _Conn, exc: BaseException, what: str) -> FenceError:
        if isinstance(exc, AnswerTooLarge | AnswerTruncated):
            return self._err(BmcProtocolError, f"Redfish {what}: {exc}; nothing of it is used")
        if isinstance(exc, requests.exceptions.TooManyRedirects):
            return self._err(BmcProtocolError, f"Redfish {what}: the BMC redirects in a loop")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return self._err(BmcProtocolError, f"Redfish {what}: the answer was cut short")
        root = _innermost(exc)
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

    def _api(self, conn: _Conn, method: str, path: str, body: Json | None = None) -> Any:
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

    def _get(self, conn: _Conn, path: str, what: str) -> Json:
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
        detail = _error_text(resp)
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

    def _login(self, conn: _Conn) -> None:
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
        self, conn: _Conn, *, fallback: bool, refused_falls_back: bool = False
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

    def _library_login(self, conn: _Conn, method: str) -> None:
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

    def _ready(self, conn: _Conn) -> str:
        """Log in if needed and find the system; return its URI."""
        if conn.auth is None:
            self._login(conn)
        if conn.system_uri is None:
            conn.system_uri = self._discover(conn)
        return conn.system_uri

    # system, state, reset ----------------------------------------------------------------

    def _discover(self, conn: _Conn) -> str:
        spec = self.spec
        if spec.systems_uri:
            uri = urlsplit(spec.systems_uri).path or spec.systems_uri
            self._get(conn, uri, "read systems_uri")
            return uri
        link = ((conn.root or {}).get("Systems") or {}).get("@odata.id") or "/redfish/v1/Systems"
        members = self._get(conn, str(link), "list systems").get("Members")
        if not isinstance(members, list):
            raise self._err(BmcProtocolError, f"Redfish GET {link}: no Members list")
        uris = [m.get("@odata.id") for m in members if isinstance(m, dict)]
        if not all(isinstance(u, str) for u in uris):
            raise self._err(BmcProtocolError, f"Redfish GET {link}: a member has no @odata.id")
        selecting = spec.system_id or spec.system_name or spec.system_uuid
        if len(uris) == 1 and not selecting:
            return str(uris[0])
        docs = [(str(u), self._get(conn, str(u), "read system")) for u in uris]
        return select_system(spec, docs, node=self.node, device=self.device)

    def _state_sync(self, conn: _Conn) -> PowerState:
        uri = self._ready(conn)
        return self._power_of(self._get(conn, uri, "read the power state"), uri)

    def _power_of(self, doc: Json, uri: str) -> PowerState:
        """The system's PowerState; a missing or non-Redfish value is an error, not a guess."""
        value = doc.get("PowerState")
        if value not in _REDFISH_POWER_STATES:
            raise self._err(
                BmcProtocolError,
                f"Redfish system {uri}: PowerState {_shown(value)} is not one of "
                f"{', '.join(_REDFISH_POWER_STATES)}; the power state is unknown",
            )
        return power_state_from(value)

    def _reset_action(self, conn: _Conn, uri: str, doc: Json) -> tuple[str, list[str] | None]:
        """The reset target and its allowed ResetTypes (`None`: not advertised)."""
        actions = doc.get("Actions")
        action = actions.get(_RESET) if isinstance(actions, dict) else None
        if not isinstance(action, dict):
            raise self._err(
                BmcUnsupported, f"Redfish system {uri} offers no ComputerSystem.Reset action"
            )
        target = action.get("target") or f"{uri.rstrip('/')}/Actions/ComputerSystem.Reset"
        if isinstance(target, str) and "://" in target:
            target = urlsplit(target).path  # same service: only the path is ours to follow
        if not isinstance(target, str) or not target.startswith("/"):
            raise self._err(
                BmcProtocolError,
                f"Redfish system {uri}: the reset action's target {_shown(target)} is not a path",
            )
        allowed = action.get("ResetType@Redfish.AllowableValues")
        info = action.get("@Redfish.ActionInfo")
        if allowed is None and isinstance(info, str):
            params = self._get(conn, info, "read the reset ActionInfo").get("Parameters")
            for param in params if isinstance(params, list) else []:
                if isinstance(param, dict) and param.get("Name") == "ResetType":
                    allowed = param.get("AllowableValues")
        if allowed is not None and not (
            isinstance(allowed, list) and all(isinstance(v, str) for v in allowed)
        ):
            raise self._err(
                BmcProtocolError, f"Redfish system {uri}: allowable ResetTypes are not strings"
            )
        return str(target), allowed

    def _reset_sync(self, conn: _Conn, want: Literal["off", "on"]) -> str:
        uri = self._ready(conn)
        target, allowed = self._reset_action(conn, uri, self._get(conn, uri, "read the system"))
        kind = choose_reset_type(allowed, HARD_OFF_RESET_TYPES if want == "off" else ON_RESET_TYPES)
        if kind is None:
            raise self._err(BmcUnsupported, _no_reset_text(uri, want, allowed or []))
        resp = self._api(conn, "POST", target, {"ResetType": kind})
        if resp.status == 409:
            # Some BMCs refuse a reset to the state the system is already in.
            now = self._power_of(self._get(conn, uri, "re-read the power state"), uri)
            if now == (PowerState.OFF if want == "off" else PowerState.ON):
                return kind
        if not 200 <= resp.status < 300:
            raise self._status_error(resp, f"{kind} (POST {target})")
        return kind

    def _check_sync(self, conn: _Conn) -> tuple[PowerState, bool, str]:
        uri = self._ready(conn)
        doc = self._get(conn, uri, "read the system")
        state = power_state_from(doc.get("PowerState"))
        try:
            _, allowed = self._reset_action(conn, uri, doc)
        except BmcUnsupported as err:
            return state, False, err.message
        kind = choose_reset_type(allowed, HARD_OFF_RESET_TYPES)
        if kind is None:
            return state, False, _no_reset_text(uri, "off", allowed or [])
        return state, True, f"system {uri}, {conn.auth} auth, power-off by {kind}"


def _no_reset_text(uri: str, want: Literal["off", "on"], allowed: Sequence[str]) -> str:
    offered = ", ".join(allowed) or "nothing"
    if want == "off":
        return (
            f"Redfish system {uri} offers no hard power-off (ForceOff); it allows {offered}. "
            "A graceful shutdown is not a fence: use another fencing device for this node"
        )
    return f"Redfish system {uri} offers no power-on (On, ForceOn); it allows {offered}"
