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

Where it lives: `backends/redfish/model.py` (pure: power states, reset types, system selection,
strict JSON), `backends/redfish/transport.py` (the library's requests session, bounded),
`backends/redfish/client.py` (login and the error mapping), and here the power backend: the
async interface, the deadline around each call, the system lookup and the reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from redfish.rest import v1 as rf

from nodefence.backends.base import CheckResult, PowerBackend, PowerState, failed_check
from nodefence.backends.deadline import run_bounded
from nodefence.backends.errors import (
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.redfish.client import RedfishClient, log
from nodefence.backends.redfish.model import (
    HARD_OFF_RESET_TYPES,
    ON_RESET_TYPES,
    REDFISH_POWER_STATES,
    RESET_ACTION,
    Json,
    choose_reset_type,
    no_reset_text,
    power_state_from,
    select_system,
    shown,
)
from nodefence.backends.redfish.transport import RedfishConnection
from nodefence.backends.spec import RedfishDevice

T = TypeVar("T")


class RedfishBackend(RedfishClient, PowerBackend):
    """Power control of one node through a Redfish service's ComputerSystem.Reset action."""

    def __init__(self, node: str, spec: RedfishDevice) -> None:
        super().__init__(node, spec)
        self._conn: RedfishConnection | None = None
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
        except FenceError as err:
            return failed_check(err, self._conn is not None and self._conn.auth is not None)
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

    async def _call(self, what: str, fn: Callable[[RedfishConnection], T]) -> T:
        timeout = self.spec.timeouts.timeout
        async with self._lock:
            if self._conn is None:
                self._conn = RedfishConnection(self._new_client())
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

    def _guarded(
        self, conn: RedfishConnection, fn: Callable[[RedfishConnection], T], what: str
    ) -> T:
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

    def _ready(self, conn: RedfishConnection) -> str:
        """Log in if needed and find the system; return its URI."""
        if conn.auth is None:
            self._login(conn)
        if conn.system_uri is None:
            conn.system_uri = self._discover(conn)
        return conn.system_uri

    # system, state, reset ----------------------------------------------------------------

    def _discover(self, conn: RedfishConnection) -> str:
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

    def _state_sync(self, conn: RedfishConnection) -> PowerState:
        uri = self._ready(conn)
        return self._power_of(self._get(conn, uri, "read the power state"), uri)

    def _power_of(self, doc: Json, uri: str) -> PowerState:
        """The system's PowerState; a missing or non-Redfish value is an error, not a guess."""
        value = doc.get("PowerState")
        if value not in REDFISH_POWER_STATES:
            raise self._err(
                BmcProtocolError,
                f"Redfish system {uri}: PowerState {shown(value)} is not one of "
                f"{', '.join(REDFISH_POWER_STATES)}; the power state is unknown",
            )
        return power_state_from(value)

    def _reset_action(
        self, conn: RedfishConnection, uri: str, doc: Json
    ) -> tuple[str, list[str] | None]:
        """The reset target and its allowed ResetTypes (`None`: not advertised)."""
        actions = doc.get("Actions")
        action = actions.get(RESET_ACTION) if isinstance(actions, dict) else None
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
                f"Redfish system {uri}: the reset action's target {shown(target)} is not a path",
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

    def _reset_sync(self, conn: RedfishConnection, want: Literal["off", "on"]) -> str:
        uri = self._ready(conn)
        target, allowed = self._reset_action(conn, uri, self._get(conn, uri, "read the system"))
        kind = choose_reset_type(allowed, HARD_OFF_RESET_TYPES if want == "off" else ON_RESET_TYPES)
        if kind is None:
            raise self._err(BmcUnsupported, no_reset_text(uri, want, allowed or []))
        resp = self._api(conn, "POST", target, {"ResetType": kind})
        if resp.status == 409:
            # Some BMCs refuse a reset to the state the system is already in.
            now = self._power_of(self._get(conn, uri, "re-read the power state"), uri)
            if now == (PowerState.OFF if want == "off" else PowerState.ON):
                return kind
        if not 200 <= resp.status < 300:
            raise self._status_error(resp, f"{kind} (POST {target})")
        return kind

    def _check_sync(self, conn: RedfishConnection) -> tuple[PowerState, bool, str]:
        uri = self._ready(conn)
        doc = self._get(conn, uri, "read the system")
        state = power_state_from(doc.get("PowerState"))
        try:
            _, allowed = self._reset_action(conn, uri, doc)
        except BmcUnsupported as err:
            return state, False, err.message
        kind = choose_reset_type(allowed, HARD_OFF_RESET_TYPES)
        if kind is None:
            return state, False, no_reset_text(uri, "off", allowed or [])
        return state, True, f"system {uri}, {conn.auth} auth, power-off by {kind}"
