"""IPMI 2.0 (RMCP+, lanplus) power backend: pyghmi in a worker process that can be killed.

pyghmi keeps its sessions, sockets and IO thread process-wide and cannot be interrupted: a
call given up at its deadline went on inside it, could send its power-off long after we had
moved on, logged in again after `close()` and left BMC sessions open, and its threads stalled
other BMCs' sessions. So every backend talks to the BMC through its own worker process
(`nodefence.backends.ipmi.worker`, pyghmi handling in `nodefence.backends.ipmi.console`), one
request at a time over a socket pair (`nodefence.backends.ipmi.wire`):

- a call that misses its deadline, is cancelled, or runs when `close()` comes, has its
  worker killed (SIGKILL) at once: nothing it started can act later, and nothing of it is
  left among other sessions; the next call starts on a fresh worker;
- the worker reported each BMC session it opened (id, keys, sequence numbers), so a session
  a killed worker left open is closed by us (`nodefence.backends.ipmi.close`);
- after a failed call the worker is replaced too, so no half-failed library state is reused;
- workers are started ahead (`nodefence.backends.ipmi.pool`): a fence does not wait for an
  interpreter to start; the password reaches the worker over the socket, never in argv or
  environment;
- a worker exits when its socket closes, so it dies with this process.
Errors keep their types and messages across the process boundary.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from nodefence.backends.base import CheckResult, PowerBackend, PowerState, failed_check
from nodefence.backends.errors import (
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.ipmi.close import send_close_session
from nodefence.backends.ipmi.pool import POOL, WorkerGone, WorkerPool, WorkerProcess
from nodefence.backends.ipmi.wire import ERROR_KINDS, Answer, Command, Logout, Open
from nodefence.backends.spec import IpmiDevice

log = logging.getLogger("nodefence.backends.ipmi")

SUPPORTED_CIPHERS = (3, 17)
_PRIVILEGE = {"operator": 3, "administrator": 4}

# Chassis netfn/commands (IPMI 2.0 section 28).
_NETFN_CHASSIS = 0x00
_CMD_GET_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CONTROL_POWER_DOWN = 0x00
_CONTROL_POWER_UP = 0x01
_CHASSIS_STATUS_MIN_LEN = 3  # table 28-3: three mandatory bytes, a fourth optional
_FINISH_WITHIN = 1.0  # seconds for a killed worker's last reports to come in
_START_WITHIN = 60.0  # seconds to get a worker ready (a place, a start), on top of `timeout`
_SLOT_POLL = 0.02  # seconds between looks for a free place when `max_workers` are in use


def prestart_workers(pool: WorkerPool = POOL) -> None:
    """Start IPMI worker processes ahead, so that the first fence does not wait for one.

    Optional: the first IPMI call starts one anyway (about 0.1-0.3 s later). Call it when a
    fence becomes likely (e.g. on taking the leader Lease).
    """
    pool.prestart()


class IpmiBackend(PowerBackend):
    """Power control of one node through an IPMI 2.0 BMC."""

    def __init__(self, node: str, spec: IpmiDevice, *, pool: WorkerPool = POOL) -> None:
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
        self._pool = pool
        self._worker: WorkerProcess | None = None
        self._logged_in = False  # the worker's last request succeeded: its session is open
        self.session_up = False  # the last request got as far as an open session with the BMC
        self._lock: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._burials: set[asyncio.Task[None]] = set()

    @property
    def worker_pid(self) -> int | None:
        """The process id of the worker serving this backend now, if any."""
        return self._worker.pid if self._worker is not None else None

    # -- talking to the worker --------------------------------------------------------------

    def _error(self, cls: type[FenceError], message: str) -> FenceError:
        return cls(message, node=self.node, device=self.device, address=self.address)

    async def _start_worker(self) -> WorkerProcess:
        """A fresh worker for this backend, told its BMC and ready to serve."""
        while True:
            try:
                worker = self._pool.take()
            except OSError as err:
                raise self._error(
                    BmcProtocolError, f"IPMI: could not start a worker process ({err.strerror})"
                ) from None
            if worker is not None:
                break
            await asyncio.sleep(_SLOT_POLL)  # all places taken: one frees within its timeout
        spec = self.spec
        self._worker, self._logged_in = worker, False
        privilege = _PRIVILEGE[spec.privilege]
        worker.send(
            Open(spec.address, spec.port, spec.username, spec.password, spec.cipher, privilege)
        )
        await worker.wait_ready()
        return worker

    def _abandon(self, worker: WorkerProcess, *, drain: bool = True) -> None:
        """Kill `worker` now and close, in the background, any BMC session it left open.

        With `drain=False` (the worker answered its last request and is idle, so it has
        nothing more to report) its socket is closed at once instead of read to the end.
        The pool reaps it and starts a spare in its place.
        """
        worker.kill()
        if self._worker is worker:
            self._worker, self._logged_in = None, False
        if worker.retired:
            return
        worker.retired = True
        self._pool.retire(worker)
        if not drain and not worker.sessions:
            worker.close_socket()
            return
        task = asyncio.get_running_loop().create_task(self._bury(worker))
        self._burials.add(task)
        task.add_done_callback(self._burials.discard)

    async def _bury(self, worker: WorkerProcess) -> None:
        await worker.finish(_FINISH_WITHIN)
        for opened in list(worker.sessions.values()):
            await send_close_session(
                self.spec.address,
                self.spec.port,
                opened.keys,
                opened.sequence,
                timeout=self.spec.timeouts.timeout,
            )

    async def _request(self, what: str, command: int, data: bytes = b"") -> bytes:
        """One chassis request within the device's `timeout`: waiting for this backend's turn
        and the BMC's answer count; getting a worker process ready (when no spare was, or
        all places were taken) does not, up to `_START_WITHIN` seconds."""
        timeout = self.spec.timeouts.timeout
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        in_flight: WorkerProcess | None = None
        starting = logged_in = False
        try:
            async with asyncio.timeout(timeout) as deadline, self._lock:
                worker = self._worker
                if worker is None or worker.ended or worker.proc.poll() is not None:
                    if worker is not None:
                        self._abandon(worker)
                    starting, paused, until = True, loop.time(), deadline.when()
                    deadline.reschedule(None)
                    async with asyncio.timeout(_START_WITHIN):
                        worker = await self._start_worker()
                    deadline.reschedule((until or paused) + loop.time() - paused)
                    starting = False
                logged_in = self._logged_in
                self.session_up = False
                request = Command(next(self._ids), _NETFN_CHASSIS, command, data)
                in_flight = worker
                worker.send(request)
                reply = await worker.reply()
                in_flight = None
        except TimeoutError:
            if starting:
                if self._worker is not None:
                    self._abandon(self._worker)
                raise self._error(
                    BmcProtocolError,
                    f"IPMI {what}: no worker process was ready within {_START_WITHIN:g} s "
                    f"({self._pool.in_use()} in use)",
                ) from None
            # Anything that came back from the BMC (a datagram, a session begun) means it is
            # there: only complete silence is "unreachable".
            heard = logged_in or bool(
                in_flight is not None and (in_flight.sessions or in_flight.heard)
            )
            self.session_up = logged_in or bool(in_flight is not None and in_flight.logged_in)
            if in_flight is not None:
                self._abandon(in_flight)
            if heard:
                raise self._error(
                    BmcTimeout,
                    f"IPMI {what}: the BMC answered, but the "
                    f"{'request' if self.session_up else 'login'} did not finish within "
                    f"{timeout:g} s",
                ) from None
            raise self._error(
                BmcUnreachable,
                f"IPMI {what}: no answer from the BMC within {timeout:g} s; check the address, "
                "port and that the BMC's network is up",
            ) from None
        except WorkerGone as gone:
            if self._worker is not None:
                self._abandon(self._worker)
            raise self._error(
                BmcProtocolError, f"IPMI {what}: {gone} before answering (closed meanwhile?)"
            ) from None
        except BaseException:  # cancelled: the request must not go on without its caller
            if in_flight is not None:
                self._abandon(in_flight)
            elif starting and self._worker is not None:
                self._abandon(self._worker)
            raise
        self.session_up = worker.logged_in
        if isinstance(reply, Answer) and reply.id == request.id:
            self._logged_in = self.session_up = True
            return reply.data
        self._abandon(worker)  # a failed request: the next one starts on a fresh worker
        if isinstance(reply, Answer):
            raise self._error(BmcProtocolError, f"IPMI {what}: the worker answered out of turn")
        cls = ERROR_KINDS.get(reply.kind, BmcProtocolError)
        raise self._error(cls, reply.message)

    # -- the async interface --------------------------------------------------------------

    async def power_state(self) -> PowerState:
        """Get Chassis Status: bit 0 of the first byte is 'system power is on'.

        The answer must carry at least the three bytes the specification makes mandatory
        (current power state, last power event, misc. chassis state): a shorter one is
        malformed, and reading its first byte could turn a truncated "on" into an Off.
        """
        data = await self._request("power status", _CMD_GET_CHASSIS_STATUS)
        if len(data) < _CHASSIS_STATUS_MIN_LEN:
            raise self._error(
                BmcProtocolError,
                f"IPMI Get Chassis Status answered {len(data)} data byte(s) "
                f"({data.hex() or 'none'}), at least {_CHASSIS_STATUS_MIN_LEN} are required; "
                "the power state is unknown",
            )
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    async def power_off(self) -> None:
        """Chassis Control 'power down': immediate, no OS shutdown."""
        await self._request("power off", _CMD_CHASSIS_CONTROL, bytes([_CONTROL_POWER_DOWN]))

    async def power_on(self) -> None:
        """Chassis Control 'power up'."""
        await self._request("power on", _CMD_CHASSIS_CONTROL, bytes([_CONTROL_POWER_UP]))

    async def check(self) -> CheckResult:
        """Log in and read the power state; IPMI chassis control is always offered.

        Says no more than it saw: "authenticated" only when a session came up.
        """
        try:
            state = await self.power_state()
        except FenceError as err:
            return failed_check(err, self.session_up)
        return CheckResult(True, True, state, True, f"cipher suite {self.spec.cipher}")

    async def close(self) -> None:
        """Log out and end the worker; bounded, never raises, safe to repeat.

        A call still running on this backend is ended with its worker. When `close()`
        returns, no worker of this backend is left and every BMC session one of them left
        open has been sent its Close Session.
        """
        worker = self._worker
        if worker is not None:
            if self._lock is not None and self._lock.locked():
                self._abandon(worker)  # a call is on it: end that call now
            else:
                await self._logout(worker)
        if self._burials:
            await asyncio.wait(
                set(self._burials), timeout=self.spec.timeouts.timeout + _FINISH_WITHIN
            )

    async def _logout(self, worker: WorkerProcess) -> None:
        answered = False
        try:
            async with asyncio.timeout(self.spec.timeouts.timeout):
                worker.send(Logout(next(self._ids)))
                answered = isinstance(await worker.reply(), Answer)
        except (TimeoutError, WorkerGone) as err:
            log.info(
                "ipmi logout did not finish: %s",
                err or "no answer in time",
                extra={"node": self.node},
            )
        # It has nothing left to do; whatever it left open is closed by us.
        self._abandon(worker, drain=not answered)
