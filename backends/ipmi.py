"""IPMI 2.0 (RMCP+, lanplus) power backend on pyghmi.

pyghmi traps this module avoids, on purpose:
- `Command.set_power(..., wait=True)` polls once a second: we send the Chassis Control request
  ourselves and leave read-back polling to the caller, at its own pace.
- pyghmi caches sessions by (address, userid) and compares the userid it stored as bytes with
  the one asked for: a str never matches, while bytes can be handed a stale or logged-out
  session. Worse, its table of sessions being set up is keyed by the str userid but cleaned
  with the bytes one, so the entry is never removed and the next login with the same
  credentials is handed the old (logged-out, broken) session. We pass str, drop that stale
  entry before every login, refuse a session that is not logged in, and throw our session
  away after any error.
- Against a BMC that never answers (some do for unknown users) pyghmi's login loop can take
  many seconds: every call runs in a worker thread under our own deadline.
- pyghmi negotiates cipher suite 17 and silently falls back to 3; we start with the suite
  configured and refuse a session that did not get it.
- pyghmi's waits (`_poller`, `awaitresponse`, `_cmdwait`) first look at what was received,
  then register a wait with its IO thread: a reply the IO thread queues in between is not
  noticed until that wait's own timeout (0.5-1 s), seen here as one fence in eight taking
  a second longer. `_install_wait_fix` caps every such wait at 20 ms; the callers already
  loop until their reply or deadline, so they re-check their queues within 20 ms.
- When a login fails, pyghmi can mark the session broken before recording why, and its
  constructor then dies reading a missing `errormsg`; our session class waits for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi.private import session as pyghmi_session

from backends.base import CheckResult, PowerBackend, PowerState
from backends.deadline import run_bounded
from backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from backends.spec import IpmiDevice

log = logging.getLogger("nodefence.backends.ipmi")

SUPPORTED_CIPHERS = (3, 17)
_PRIVILEGE = {"operator": 3, "administrator": 4}

# Chassis netfn/commands (IPMI 2.0 section 28).
_NETFN_CHASSIS = 0x00
_CMD_GET_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CONTROL_POWER_DOWN = 0x00
_CONTROL_POWER_UP = 0x01
_CODE_MALFORMED = 0xFF  # "unspecified error", set on an answer that failed our own checks
_CHASSIS_STATUS_MIN_LEN = 3  # table 28-3: three mandatory bytes, a fourth optional

_AUTH_MARKERS = (
    "unauthorized name",
    "incorrect password",
    "invalid integrity check value",
    "unauthorized role",
    "invalid role",
    "wrong kg",
)
_UNSUPPORTED_MARKERS = (
    "no cipher suite match",
    "invalid authentication algorithm",
    "invalid integrity algorithm",
    "invalid confidentiality algorithm",
)


_WAIT_SLICE = 0.02


def _install_wait_fix() -> None:
    """Cap pyghmi's IO waits at `_WAIT_SLICE` seconds so no queued reply waits for a timer."""
    if getattr(pyghmi_session, "_nodefence_wait_fix", False):
        return
    io_wait = pyghmi_session._io_wait

    def sliced_io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        io_wait(min(timeout, _WAIT_SLICE), myaddr, evq)

    pyghmi_session._io_wait = sliced_io_wait
    pyghmi_session._nodefence_wait_fix = True


_install_wait_fix()


def _install_lock_fix() -> None:
    """One lock for pyghmi's two session tables, so its lock order cannot deadlock.

    pyghmi takes its keepalive-table and waiting-table locks in opposite orders on two paths
    (a request timing out while holding the waiting table resends, which takes the keepalive
    lock; a send holding the keepalive lock takes the waiting one). Two sessions timing out
    and resending at the same moment deadlock, and from then on every IPMI session of the
    process blocks for good: no node could be fenced over IPMI until a restart. Both names
    are looked up at each use, so one reentrant lock under both makes the order irrelevant.
    """
    if getattr(pyghmi_session, "_nodefence_lock_fix", False):
        return
    tables = threading.RLock()
    pyghmi_session.KEEPALIVE_SESSIONS = tables
    pyghmi_session.WAITING_SESSIONS = tables
    pyghmi_session._nodefence_lock_fix = True


_install_lock_fix()


def _session_class(hash_bits: int) -> type[Any]:
    """A pyghmi Session that starts RMCP+ negotiation with the wanted cipher suite."""

    class _Session(pyghmi_session.Session):  # type: ignore[misc]
        def _initsession(self) -> None:
            super()._initsession()
            self.attemptedhash = hash_bits

        # pyghmi's `_mark_broken` (often run by another thread's event loop) logs out -
        # which sets `broken` and ends the login wait - before it records `errormsg`; the
        # waiting constructor then reads a missing attribute. Wait briefly for the reason.
        @property
        def errormsg(self) -> str:
            deadline = time.monotonic() + 1.0
            while "_nf_errormsg" not in self.__dict__ and time.monotonic() < deadline:
                time.sleep(0.002)
            return str(self.__dict__.get("_nf_errormsg", "session failed (no reason given)"))

        @errormsg.setter
        def errormsg(self, value: str) -> None:
            self.__dict__["_nf_errormsg"] = value

        # pyghmi's logout removes the packet handler registered for (BMC address, local
        # port) without checking that it is its own: a session abandoned at its deadline
        # that logs out late unhooks the newer session that reuses the port, whose answers
        # are then dropped - every later login to that BMC times out. Put back what was not
        # ours.
        def logout(self, sessionok: bool = True) -> Any:
            handlers = pyghmi_session.Session.bmc_handlers
            others = [
                (addr, port, owner)
                for addr in list(getattr(self, "allsockaddrs", None) or ())
                for port, owner in list(handlers.get(addr, {}).items())
                if owner is not self
            ]
            try:
                return super().logout(sessionok)
            finally:
                for addr, port, owner in others:
                    handlers.setdefault(addr, {}).setdefault(port, owner)

        # pyghmi does not check the IPMI message checksums of an answer and would hand back
        # the data of a malformed one. A bad answer to our request is turned into a failed
        # request (completion code FFh, the reason kept for our message), never read.
        def _parse_ipmi_payload(self, payload: Any) -> Any:
            if len(payload) >= 7 and not self.servermode and not _checksums_ok(payload):
                self.__dict__["_nf_malformed"] = "its IPMI message checksums do not add up"
                payload[6] = _CODE_MALFORMED
            return super()._parse_ipmi_payload(payload)

    return _Session


def _checksums_ok(message: Any) -> bool:
    """The two IPMI message checksums (header, then body) each bring their part to 0 mod 256."""
    return bool(sum(message[0:3]) & 0xFF == 0 and sum(message[3:]) & 0xFF == 0)


_SESSION_FOR_CIPHER = {3: _session_class(1), 17: _session_class(256)}


def classify_ipmi_error(message: str, *, node: str, device: str, during_login: bool) -> FenceError:
    """Map a pyghmi error text to our typed error (pure, tested on its own)."""
    low = message.lower()
    if any(m in low for m in _AUTH_MARKERS):
        return BmcAuthFailed(
            f"IPMI login refused: {message}; check username, password and privilege",
            node=node,
            device=device,
        )
    if any(m in low for m in _UNSUPPORTED_MARKERS):
        return BmcUnsupported(
            f"IPMI cipher suite refused by the BMC: {message}; set `cipher` to one it offers",
            node=node,
            device=device,
        )
    if during_login and ("timeout" in low or "failed to initialize" in low):
        return BmcUnreachable(
            f"IPMI BMC did not answer the login: {message}; check address, port and network",
            node=node,
            device=device,
        )
    return BmcProtocolError(f"IPMI error: {message}", node=node, device=device)


class IpmiBackend(PowerBackend):
    """Power control of one node through an IPMI 2.0 BMC."""

    def __init__(self, node: str, spec: IpmiDevice) -> None:
        if spec.cipher not in SUPPORTED_CIPHERS:
            raise BmcUnsupported(
                f"IPMI cipher suite {spec.cipher} is not supported (use one of "
                f"{', '.join(map(str, SUPPORTED_CIPHERS))})",
                node=node,
                device=spec.name,
            )
        self.node = node
        self.device = spec.name
        self.spec = spec
        host = f"[{spec.address}]" if ":" in spec.address else spec.address
        self.address = f"{host}:{spec.port}"  # named in every error, next to node and device
        self._session: Any = None
        self._lock = threading.Lock()
        self._closing = False  # close() was called while a call still held the session

    # -- blocking helpers (run in worker threads) ------------------------------------------

    def _login(self) -> Any:
        spec = self.spec
        cls = _SESSION_FOR_CIPHER[spec.cipher]
        password = spec.password.reveal()
        stale_key = (spec.address, spec.username, password, spec.port, None)
        pyghmi_session.Session.initting_sessions.pop(stale_key, None)
        try:
            sess = cls(
                bmc=spec.address,
                userid=spec.username,  # str on purpose: never hit pyghmi's session cache
                password=password,
                port=spec.port,
                privlevel=_PRIVILEGE[spec.privilege],
                keepalive=False,
            )
        except pyghmi_exc.IpmiException as err:
            raise classify_ipmi_error(
                str(err), node=self.node, device=self.device, during_login=True
            ) from None
        except OSError as err:
            raise BmcUnreachable(
                f"IPMI socket error: {err.strerror or err}", node=self.node, device=self.device
            ) from None
        except Exception as err:
            # pyghmi has internal failures of its own (e.g. a session marked broken before
            # it recorded why raises AttributeError): a failed login, never a crash.
            raise BmcProtocolError(
                f"IPMI login failed inside pyghmi: {type(err).__name__}",
                node=self.node,
                device=self.device,
            ) from None
        finally:
            pyghmi_session.Session.initting_sessions.pop(stale_key, None)
        if getattr(sess, "broken", True) or not getattr(sess, "logged", False):
            self._drop(sess)
            raise BmcProtocolError(
                "IPMI login did not complete (pyghmi handed back a session that is not logged in)",
                node=self.node,
                device=self.device,
            )
        want = hashlib.sha256 if spec.cipher == 17 else hashlib.sha1
        if getattr(sess, "currhashlib", None) is not want:
            self._drop(sess)
            raise BmcUnsupported(
                f"IPMI BMC would not negotiate cipher suite {spec.cipher}",
                node=self.node,
                device=self.device,
            )
        return sess

    def _drop(self, sess: Any) -> None:
        # Best effort: the session has already failed or is being discarded.
        with contextlib.suppress(Exception):
            sess.logout()

    def _raw(self, command: int, data: tuple[int, ...] = ()) -> bytes:
        with self._lock:
            self._closing = False
            try:
                return self._raw_locked(command, data)
            finally:
                if self._closing and self._session is not None:
                    # close() gave up waiting for this call (it overran its deadline).
                    self._drop(self._session)
                    self._session = None

    def _raw_locked(self, command: int, data: tuple[int, ...]) -> bytes:
        if self._session is None or self._session.broken or not self._session.logged:
            self._session = None
            self._session = self._login()
        sess = self._session
        try:
            resp = sess.raw_command(netfn=_NETFN_CHASSIS, command=command, data=data)
        except pyghmi_exc.IpmiException as err:
            self._session = None
            self._drop(sess)
            raise classify_ipmi_error(
                str(err), node=self.node, device=self.device, during_login=False
            ) from None
        except Exception as err:
            self._session = None
            self._drop(sess)
            raise BmcProtocolError(
                f"IPMI request failed inside pyghmi: {type(err).__name__}",
                node=self.node,
                device=self.device,
            ) from None
        malformed = sess.__dict__.pop("_nf_malformed", None)
        if malformed is not None:
            self._session = None
            self._drop(sess)
            raise BmcProtocolError(
                f"IPMI answer from the BMC is malformed ({malformed}); its data is ignored",
                node=self.node,
                device=self.device,
                address=self.address,
            )
        if "error" in resp:
            self._session = None
            self._drop(sess)
            code = resp.get("code")
            detail = str(resp["error"])
            if code:
                detail += f" (completion code 0x{code:02x})"
            raise classify_ipmi_error(
                detail, node=self.node, device=self.device, during_login=False
            )
        return bytes(resp.get("data", b""))

    def _logout(self) -> None:
        # A call that overran its deadline may still hold the session inside pyghmi (for
        # seconds): never wait for it, it logs out itself when it ends.
        self._closing = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._session is not None:
                self._drop(self._session)
                self._session = None
        finally:
            self._lock.release()

    # -- the async interface --------------------------------------------------------------

    async def _bounded(self, what: str, command: int, data: tuple[int, ...] = ()) -> bytes:
        try:
            return await run_bounded(
                lambda: self._raw(command, data),
                timeout=self.spec.timeouts.timeout,
                node=self.node,
                device=self.device,
                what=f"IPMI {what}",
                silent_means_unreachable=self._session is None,
                address=self.address,
            )
        except FenceError as err:
            err.address = err.address or self.address
            raise

    async def power_state(self) -> PowerState:
        """Get Chassis Status: bit 0 of the first byte is 'system power is on'.

        The answer must carry at least the three bytes the specification makes mandatory
        (current power state, last power event, misc. chassis state): a shorter one is
        malformed, and reading its first byte could turn a truncated "on" into an Off.
        """
        data = await self._bounded("power status", _CMD_GET_CHASSIS_STATUS)
        if len(data) < _CHASSIS_STATUS_MIN_LEN:
            raise BmcProtocolError(
                f"IPMI Get Chassis Status answered {len(data)} data byte(s) "
                f"({data.hex() or 'none'}), at least {_CHASSIS_STATUS_MIN_LEN} are required; "
                "the power state is unknown",
                node=self.node,
                device=self.device,
                address=self.address,
            )
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    async def power_off(self) -> None:
        """Chassis Control 'power down': immediate, no OS shutdown."""
        await self._bounded("power off", _CMD_CHASSIS_CONTROL, (_CONTROL_POWER_DOWN,))

    async def power_on(self) -> None:
        """Chassis Control 'power up'."""
        await self._bounded("power on", _CMD_CHASSIS_CONTROL, (_CONTROL_POWER_UP,))

    async def check(self) -> CheckResult:
        """Log in and read the power state; IPMI chassis control is always offered."""
        try:
            state = await self.power_state()
        except BmcAuthFailed as err:
            return CheckResult(True, False, PowerState.UNKNOWN, False, str(err))
        except BmcUnreachable as err:
            return CheckResult(False, False, PowerState.UNKNOWN, False, str(err))
        except FenceError as err:
            return CheckResult(True, True, PowerState.UNKNOWN, False, str(err))
        return CheckResult(True, True, state, True, f"cipher suite {self.spec.cipher}")

    async def close(self) -> None:
        """Log out of the session, if one is open; best effort and bounded, never raises."""
        try:
            await run_bounded(
                self._logout,
                timeout=self.spec.timeouts.timeout,
                node=self.node,
                device=self.device,
                what="IPMI logout",
                address=self.address,
            )
        except FenceError as err:
            log.info("ipmi logout did not finish: %s", err, extra={"node": self.node})
