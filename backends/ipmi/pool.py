"""IPMI worker processes as the backend sees them: start, talk, kill; spares kept warm.

A `WorkerProcess` is one `python -m nodefence.backends.ipmi.worker` child and our end of its socket
pair. It is a direct child (so SIGKILL cannot hit a reused pid), in its own session (so a
terminal's Ctrl-C does not reach it), and it exits by itself when our end of the socket
closes, including when this process dies. Nothing is passed on its command line or in its
environment but the socket's descriptor number; it writes nothing to our stdout or stderr
(a worker that dies shows as `WorkerGone` with its exit status).

Starting an interpreter and loading pyghmi takes 0.1-0.3 s; `WorkerPool` keeps `spares`
workers started ahead so a fence does not wait for that. Taking one starts its replacement.
The pool is not bound to an event loop: workers are read through the running loop of
whoever talks to them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import nodefence
from nodefence.backends.ipmi.wire import (
    Answer,
    Failure,
    FrameReader,
    Heard,
    LoggedIn,
    Message,
    Ready,
    SessionClosed,
    SessionKeys,
    SessionSequence,
    WireError,
    encode,
)

log = logging.getLogger("nodefence.backends.ipmi")
# Where the `nodefence` package imports from: the checkout (nodefence/ links to the folders) or
# site-packages; the worker runs `python -m nodefence.backends.ipmi.worker` from there.
_PACKAGE_ROOT = str(Path(nodefence.__file__).resolve().parent.parent)


class WorkerGone(Exception):
    """The worker process ended (or sent garbage) before answering."""


@dataclass
class OpenSession:
    """A BMC session a worker may have left open: its keys and last sequence number used."""

    keys: SessionKeys
    sequence: int = 0


class WorkerProcess:
    """One worker child and what it has told us so far."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self._sock = sock
        self._reader = FrameReader()
        self._replies: deque[Answer | Failure] = deque()
        self.ready = False
        self.ended = False  # its end of the socket is closed: it cannot act any more
        self.retired = False  # killed by its backend, which is closing what it left open
        self.sessions: dict[int, OpenSession] = {}  # may be open on the BMC, by session id
        self.heard = False  # a datagram came back from the BMC
        self.logged_in = False  # a session with the BMC came up

    @classmethod
    def spawn(cls) -> WorkerProcess:
        """Start a worker (it loads pyghmi in the background and then says `Ready`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, path) if p)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nodefence.backends.ipmi.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Not our stdout/stderr: a spare still loading when a short command ends
                # would hold them open, and whoever reads them (a shell pipe) would wait.
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc, ours)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def send(self, message: Message) -> None:
        """Queue one message to the worker; raises `WorkerGone` if it cannot take it."""
        try:
            self._sock.sendall(encode(message))  # small frames: the socket buffer takes them
        except (BlockingIOError, OSError) as err:
            raise WorkerGone(f"the IPMI worker did not take a request ({err})") from None

    async def wait_ready(self) -> None:
        """Until the worker has loaded pyghmi; raises `WorkerGone` if it ends first."""
        while not self.ready:
            if not await self._receive():
                raise WorkerGone(f"the IPMI worker process ended while starting{self._how()}")

    async def reply(self) -> Answer | Failure:
        """The worker's next answer, taking in its reports on the way."""
        while not self._replies:
            if not await self._receive():
                raise WorkerGone(f"the IPMI worker process ended{self._how()}")
        return self._replies.popleft()

    def _how(self) -> str:
        code = self.proc.poll()
        if code is None or self.retired:
            return ""
        return f" (exit status {code})" if code >= 0 else f" (signal {-code})"

    def kill(self) -> None:
        """SIGKILL the worker now (nothing it started can go on); safe to repeat."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def finish(self, within: float) -> None:
        """Read what the worker said until its end of the socket closes.

        Call after `kill()` (or once it exits by itself): its last reports say which sessions
        it left open. Gives up after `within` seconds (the reports may then be incomplete).
        Reaping the process is the caller's business (`proc.wait()`).
        """
        try:
            async with asyncio.timeout(within):
                while await self._receive():
                    pass
        except TimeoutError:
            pass
        self.close_socket()

    def close_socket(self) -> None:
        """Close our end: a live worker exits on its own when it notices."""
        self.ended = True
        self._sock.close()

    def poll_ready(self) -> bool:
        """Without waiting: has it said `Ready` (and is its socket still open)?"""
        if not self.ended and not self.ready:
            self._read_available()
        return self.ready and not self.ended

    async def _receive(self) -> bool:
        """Take in what arrives next; False once the stream ended."""
        if self.ended:
            return False
        if self._read_available():
            return True
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        self._read_available()
        return not self.ended

    def _read_available(self) -> bool:
        """Read whatever is buffered now; True if something (or the end) was read."""
        got = False
        while not self.ended:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                return got
            except OSError:
                chunk = b""
            got = True
            if not chunk:
                self.ended = True
                break
            try:
                messages = self._reader.feed(chunk)
            except WireError:
                self.kill()
                self.ended = True
                break
            for message in messages:
                self._take(message)
        return got

    def _take(self, message: Message) -> None:
        if isinstance(message, Answer | Failure):
            self._replies.append(message)
        elif isinstance(message, Ready):
            self.ready = True
        elif isinstance(message, Heard):
            self.heard = True
        elif isinstance(message, LoggedIn):
            self.heard = self.logged_in = True
        elif isinstance(message, SessionKeys):
            self.sessions[message.session_id] = OpenSession(message)
        elif isinstance(message, SessionSequence):
            opened = self.sessions.get(message.session_id)
            if opened is not None:
                opened.sequence = max(opened.sequence, message.sequence)
        elif isinstance(message, SessionClosed):
            self.sessions.pop(message.session_id, None)


class WorkerPool:
    """Hands out fresh workers, keeping up to `spares` started ahead; thread-safe.

    At most `max_workers` are handed out and alive at once (checking a large inventory
    would otherwise start a process per device at the same moment); a worker counts until it
    is retired or ends, so one whose backend was dropped without `close()` frees its place
    when its socket is collected. Spares are replaced when a worker is given back
    (`retire`), by a helper thread: spawning blocks for a fork and exec, and a spare started
    then, rather than when a worker is taken, does not compete with the call that took it.
    """

    def __init__(self, spares: int = 2, max_workers: int = 16) -> None:
        self.spares = spares
        self.max_workers = max_workers
        self._handed_out: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()
        self._idle: list[WorkerProcess] = []
        self._lock = threading.Lock()
        self._retired: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None

    def retire(self, worker: WorkerProcess) -> None:
        """Take back a killed worker: reap it and start a spare in its place, in the background."""
        with self._lock:
            if self._helper is None or not self._helper.is_alive():
                self._helper = threading.Thread(
                    target=self._reap_and_replace, name="ipmi-spares", daemon=True
                )
                self._helper.start()
        self._retired.put(worker.proc)

    def _reap_and_replace(self) -> None:
        while True:
            proc = self._retired.get()
            proc.wait()
            try:
                self.prestart()
            except OSError as err:  # no spare now; the next call starts its own worker
                log.warning("ipmi: could not start a spare worker process: %s", err)

    def take(self) -> WorkerProcess | None:
        """A worker no one used yet (a started spare if there is one, else a new one), or
        None while `max_workers` are in use: try again when one has ended.

        Does not start a replacement spare: that happens when a worker is retired."""
        with self._lock:
            if self._in_use() >= self.max_workers:
                return None
            worker = None
            while self._idle and worker is None:
                candidate = self._idle.pop(0)
                if candidate.proc.poll() is None and not candidate.ended:
                    worker = candidate
                else:
                    candidate.close_socket()
            if worker is None:
                worker = WorkerProcess.spawn()
            self._handed_out.add(worker)
        return worker

    def in_use(self) -> int:
        """Workers handed out and neither retired nor ended."""
        with self._lock:
            return self._in_use()

    def _in_use(self) -> int:
        return sum(1 for w in list(self._handed_out) if not w.retired and w.proc.poll() is None)

    def spare_pids(self) -> list[int]:
        """Process ids of the spares started now (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._idle]

    def prestart(self) -> None:
        """Start spares up to `spares` now (they load pyghmi in the background)."""
        with self._lock:
            self._refill()

    def wait_ready(self, timeout: float) -> bool:
        """Block until every spare has loaded pyghmi (for benchmarks and tests)."""
        self.prestart()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if all(w.poll_ready() for w in self._idle):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def clear(self) -> None:
        """Stop every spare (they exit when their socket closes); `prestart` starts anew."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close_socket()
            worker.kill()
            worker.proc.wait(timeout=5)

    def _refill(self) -> None:
        self._idle = [w for w in self._idle if w.proc.poll() is None and not w.ended]
        while len(self._idle) < self.spares:
            self._idle.append(WorkerProcess.spawn())


POOL = WorkerPool()
