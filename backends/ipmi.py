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

SUPPORTED_CIPHERS = (3, 17)
_PRIVILEGE = {"operator": 3, "administrator": 4}

# Chassis netfn/commands (IPMI 2.0 section 28).
_NETFN_CHASSIS = 0x00
_CMD_GET_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CONTROL_POWER_DOWN = 0x00
_CONTROL_POWER_UP = 0x01

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

    return _Session


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
        self._session: Any = None
        self._lock = threading.Lock()

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
        with self._lock:
            if self._session is not None:
                self._drop(self._session)
                self._session = None

    # -- the async interface --------------------------------------------------------------

    async def _bounded(self, what: str, command: int, data: tuple[int, ...] = ()) -> bytes:
        return await run_bounded(
            lambda: self._raw(command, data),
            timeout=self.spec.timeouts.timeout,
            node=self.node,
            device=self.device,
            what=f"IPMI {what}",
            silent_means_unreachable=self._session is None,
        )

    async def power_state(self) -> PowerState:
        """Get Chassis Status: bit 0 of the first byte is 'system power is on'."""
        data = await self._bounded("power status", _CMD_GET_CHASSIS_STATUS)
        if not data:
            raise BmcProtocolError(
                "IPMI Get Chassis Status returned no data", node=self.node, device=self.device
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
        """Log out of the session, if one is open."""
        await run_bounded(
            self._logout,
            timeout=self.spec.timeouts.timeout,
            node=self.node,
            device=self.device,
            what="IPMI logout",
        )
