"""One IPMI 2.0 (RMCP+, lanplus) console on pyghmi; blocking, run only in a worker process.

`nodefence.backends.ipmi.worker` runs one `IpmiConsole` per process, for one backend: pyghmi keeps
its sessions, sockets and IO thread process-wide, so a call the backend abandons at its deadline
is ended by killing the process, never left running among other sessions. The console
reports, through `report`, what the backend needs to close a session the kill left behind
(`nodefence.backends.ipmi.wire.SessionKeys`, `SessionSequence`, `SessionClosed`).

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
- Once logged in, pyghmi answers a request that timed out by logging in again in a new BMC
  session, without closing the old one, and resending the request in it. We switch that off
  (`logontries = 0`): a request fails instead, and the backend decides what comes next.
- pyghmi negotiates cipher suite 17 and silently falls back to 3; we start with the suite
  configured and refuse a session that did not get it.
- pyghmi's waits (`_poller`, `awaitresponse`, `_cmdwait`) first look at what was received,
  then register a wait with its IO thread: a reply the IO thread queues in between is not
  noticed until that wait's own timeout (0.5-1 s), seen as one fence in eight taking a second
  longer. `nodefence.backends.ipmi.pyghmi_patches` caps every such wait at 20 ms; the callers
  already loop until their reply or deadline, so they re-check their queues within 20 ms.
- pyghmi takes its two session-table locks in opposite orders on two paths (see
  `nodefence.backends.ipmi.pyghmi_patches`).
- When a login fails, pyghmi can mark the session broken before recording why, and its
  constructor then dies reading a missing `errormsg`; our session class waits for it.
- pyghmi gives up a login after its own retries (~4-5.5 s) with an error whose text is
  "None", whether the BMC never answered or answered part of the handshake. Our session class
  notes the first datagram that comes back (`Heard`): a login failure without one is
  `BmcUnreachable`, with one it is `BmcTimeout` (it is there, but no session came up).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi.private import session as pyghmi_session

from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.ipmi.wire import (
    Heard,
    LoggedIn,
    Message,
    Open,
    SessionClosed,
    SessionKeys,
    SessionSequence,
)

Report = Callable[[Message], None]

_CODE_MALFORMED = 0xFF  # "unspecified error", set on an answer that failed our own checks
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


def warm_up() -> None:
    """Do now, before any BMC waits on it, what the first login would do the first time.

    pyghmi opens its UDP socket and starts its IO thread on the first session, the first
    address lookup loads the IDNA codec (and `unicodedata`, `stringprep`), and the first
    HMAC and AES operations load their code: about 10 ms in a fresh process, taken here
    while the worker is still a spare.
    """
    with threading.Lock():
        pyghmi_session.Session._assignsocket()
    socket.getaddrinfo("127.0.0.1", 623, 0, socket.SOCK_DGRAM)
    for name in ("sha1", "sha256"):
        hmac.new(b"key", b"data", name).digest()
    aes = Cipher(algorithms.AES(bytes(16)), modes.CBC(bytes(16))).encryptor()
    aes.update(bytes(16))
    aes.finalize()


def _session_class(hash_bits: int, report: Report, heard: Callable[[], None]) -> type[Any]:
    """A pyghmi Session that starts RMCP+ negotiation with the wanted cipher suite and
    reports, through `report`, every session the BMC may hold and where its sequence is;
    `heard()` is called for every datagram that comes back from the BMC."""

    class _Session(pyghmi_session.Session):  # type: ignore[misc]
        def _handle_ipmi_packet(self, data: Any, sockaddr: Any = None, qent: Any = None) -> Any:
            heard()
            return super()._handle_ipmi_packet(data, sockaddr=sockaddr, qent=qent)

        def _initsession(self) -> None:
            super()._initsession()
            self.attemptedhash = hash_bits

        # The keys exist from RAKP 2 on; once RAKP 3 is out the BMC may consider the session
        # open even if its RAKP 4 never reaches us.
        def _send_rakp3(self) -> None:
            integrity: Literal["sha1", "sha256"] = (
                "sha256" if self.currhashlib is hashlib.sha256 else "sha1"
            )
            report(
                SessionKeys(self.pendingsessionid, integrity, bytes(self.k1), bytes(self.aeskey))
            )
            super()._send_rakp3()

        # The packet was built with `sequencenumber`; reported before it leaves, so a kill
        # between the two can only make the backend's Close Session skip a number.
        def _xmit_packet(
            self, retry: bool = True, delay_xmit: Any = None, timeout: Any = None
        ) -> Any:
            if self.sessionid and self.sequencenumber:
                report(SessionSequence(self.sessionid, self.sequencenumber))
            return super()._xmit_packet(retry, delay_xmit=delay_xmit, timeout=timeout)

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
        # port) without checking that it is its own: a session given up on that logs out late
        # unhooks a newer session that reuses the port. Put back what was not ours.
        def logout(self, sessionok: bool = True) -> Any:
            handlers = pyghmi_session.Session.bmc_handlers
            others = [
                (addr, port, owner)
                for addr in list(getattr(self, "allsockaddrs", None) or ())
                for port, owner in list(handlers.get(addr, {}).items())
                if owner is not self
            ]
            closing = self.sessionid if getattr(self, "logged", 0) else 0
            try:
                return super().logout(sessionok)
            finally:
                for addr, port, owner in others:
                    handlers.setdefault(addr, {}).setdefault(port, owner)
                if closing:
                    report(SessionClosed(closing))

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


def classify_ipmi_error(
    message: str, *, node: str, device: str, during_login: bool, heard: bool = False
) -> FenceError:
    """Map a pyghmi error text to our typed error (pure, tested on its own).

    A login that failed without a recognised reason (pyghmi's own timeout, or its text
    "None" after its retries) is `BmcUnreachable` only when no datagram came back from the
    BMC (`heard` false); otherwise the BMC is there but no session came up: `BmcTimeout`.
    """
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
    silent = low.strip() in ("", "none") or "timeout" in low or "failed to initialize" in low
    if during_login and silent and not heard:
        return BmcUnreachable(
            f"IPMI BMC did not answer the login ({message or 'no reason given'}); check "
            "address, port and network",
            node=node,
            device=device,
        )
    if during_login and silent:
        return BmcTimeout(
            "IPMI BMC answered part of the login, then went silent "
            f"({message or 'no reason given'}); no session came up",
            node=node,
            device=device,
        )
    if "timeout" in low:
        return BmcTimeout(
            f"IPMI request timed out in the session: {message}", node=node, device=device
        )
    return BmcProtocolError(f"IPMI error: {message}", node=node, device=device)


class IpmiConsole:
    """One BMC's session, logged in on first use; every failure is a `FenceError` (without
    node or device: the backend in the parent process adds them)."""

    def __init__(self, bmc: Open, report: Report) -> None:
        self.bmc = bmc
        self._report = report
        self.heard = False  # a datagram came back from the BMC (once true, stays true)
        self._session_cls = _session_class(256 if bmc.cipher == 17 else 1, report, self._heard)
        self._session: Any = None

    def _heard(self) -> None:
        # Called on pyghmi's IO thread; reported once, before any failure it explains.
        if not self.heard:
            self.heard = True
            self._report(Heard())

    def request(self, netfn: int, command: int, data: bytes) -> bytes:
        """Send one request in the session (logging in first) and return its answer data."""
        if self._session is None or self._session.broken or not self._session.logged:
            self._session = None
            self._session = self._login()
            self._report(LoggedIn())
        sess = self._session
        try:
            resp = sess.raw_command(netfn=netfn, command=command, data=tuple(data))
        except pyghmi_exc.IpmiException as err:
            self._discard()
            raise classify_ipmi_error(str(err), node="", device="", during_login=False) from None
        except Exception as err:
            self._discard()
            raise BmcProtocolError(
                f"IPMI request failed inside pyghmi: {type(err).__name__}"
            ) from None
        malformed = sess.__dict__.pop("_nf_malformed", None)
        if malformed is not None:
            self._discard()
            raise BmcProtocolError(
                f"IPMI answer from the BMC is malformed ({malformed}); its data is ignored"
            )
        if "error" in resp:
            self._discard()
            detail = str(resp["error"])
            code = resp.get("code")
            if code:
                detail += f" (completion code 0x{code:02x})"
            raise classify_ipmi_error(detail, node="", device="", during_login=False)
        return bytes(resp.get("data", b""))

    def logout(self) -> None:
        """Close the session, if one is open; best effort, never raises."""
        self._discard()

    def _discard(self) -> None:
        sess, self._session = self._session, None
        if sess is not None:
            _drop(sess)

    def _login(self) -> Any:
        bmc = self.bmc
        password = bmc.password.reveal()
        stale_key = (bmc.address, bmc.username, password, bmc.port, None)
        pyghmi_session.Session.initting_sessions.pop(stale_key, None)
        try:
            sess = self._session_cls(
                bmc=bmc.address,
                userid=bmc.username,  # str on purpose: never hit pyghmi's session cache
                password=password,
                port=bmc.port,
                privlevel=bmc.privilege,
                keepalive=False,
            )
        except pyghmi_exc.IpmiException as err:
            raise classify_ipmi_error(
                str(err), node="", device="", during_login=True, heard=self.heard
            ) from None
        except OSError as err:
            raise BmcUnreachable(f"IPMI socket error: {err.strerror or err}") from None
        except Exception as err:
            # pyghmi has internal failures of its own (e.g. a session marked broken before
            # it recorded why raises AttributeError): a failed login, never a crash.
            raise BmcProtocolError(
                f"IPMI login failed inside pyghmi: {type(err).__name__}"
            ) from None
        finally:
            pyghmi_session.Session.initting_sessions.pop(stale_key, None)
        if getattr(sess, "broken", True) or not getattr(sess, "logged", False):
            _drop(sess)
            raise BmcProtocolError(
                "IPMI login did not complete (pyghmi handed back a session that is not logged in)"
            )
        want = hashlib.sha256 if bmc.cipher == 17 else hashlib.sha1
        if getattr(sess, "currhashlib", None) is not want:
            _drop(sess)
            raise BmcUnsupported(f"IPMI BMC would not negotiate cipher suite {bmc.cipher}")
        sess.logontries = 0  # a timed-out request fails; no silent second session
        return sess


def _drop(sess: Any) -> None:
    # Best effort: the session has already failed or is being discarded.
    with contextlib.suppress(Exception):
        sess.logout()
