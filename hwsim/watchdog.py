"""An emulated Linux /dev/watchdog: a FIFO that a real agent process writes to.

Semantics follow the kernel's watchdog core with nowayout off, one byte per write:
any byte other than ``b"V"`` is a keepalive and arms the watchdog if it is disarmed;
``b"V"`` disarms it (the "magic close"). When armed and no keepalive arrives for
``timeout`` seconds, ``on_expire()`` is called once, the expiry is recorded and the
watchdog goes disarmed until the next keepalive (a reset machine's agent arms it again).

What a writer sees, opening ``os.open(path, os.O_WRONLY | os.O_NONBLOCK)``:

- while the emulator runs: success (the emulator holds the read end open);
- after ``stop()``: ``FileNotFoundError`` (ENOENT), the FIFO is gone, like a host with
  no watchdog device; with ``stop(remove_fifo=False)`` the FIFO stays without a reader
  and the open fails with ENXIO ("no such device or address"), like a device whose
  driver is gone;
- a writer that keeps its fd across ``stop()`` gets ``BrokenPipeError`` (EPIPE) on its
  next write and must re-open after the next ``start()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC_CLOSE = ord("V")


class EmulatedWatchdog:
    """A watchdog FIFO at `path`; `on_expire()` runs in the watchdog thread on expiry."""

    def __init__(
        self,
        path: Path,
        timeout: float,
        on_expire: Callable[[], None],
        tick: float = 0.02,
    ) -> None:
        if timeout <= 0 or tick <= 0:
            raise ValueError("timeout and tick must be positive")
        self.path = path
        self.timeout = timeout
        self.tick = tick
        self._on_expire = on_expire
        self._lock = threading.Lock()
        self._armed = False
        self._feeds = 0
        self._last_feed: float | None = None
        self._expiries: list[float] = []
        self._disarms = 0
        self._rfd: int | None = None
        self._wfd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- observable state -------------------------------------------------------------

    @property
    def armed(self) -> bool:
        """True between a keepalive and the next magic close or expiry."""
        with self._lock:
            return self._armed

    @property
    def feeds(self) -> int:
        """Keepalive bytes received since construction."""
        with self._lock:
            return self._feeds

    @property
    def last_feed(self) -> float | None:
        """`time.monotonic()` of the last keepalive, or None."""
        with self._lock:
            return self._last_feed

    @property
    def expiries(self) -> list[float]:
        """`time.monotonic()` of each expiry, oldest first (a copy)."""
        with self._lock:
            return list(self._expiries)

    @property
    def disarms(self) -> int:
        """Magic-close bytes received since construction."""
        with self._lock:
            return self._disarms

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._thread is not None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Create the FIFO (replacing a stale one), open it and start the watchdog thread."""
        if self._thread is not None:
            raise RuntimeError(f"watchdog {self.path} already started")
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(self.path.lstat().st_mode):
                raise FileExistsError(f"{self.path} exists and is not a FIFO")
            self.path.unlink()
        os.mkfifo(self.path, 0o600)
        try:
            self._rfd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            # Our own writer keeps the FIFO from reporting EOF (and select from spinning)
            # when the agent closes its end.
            self._wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except BaseException:
            self._close_fds()
            self.path.unlink(missing_ok=True)
            raise
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"hwsim-watchdog-{self.path.name}", daemon=True
        )
        self._thread.start()

    def stop(self, remove_fifo: bool = True) -> None:
        """Stop the thread, close the FIFO and remove it unless `remove_fifo` is False.

        Idempotent. The join is bounded; a hung `on_expire` is logged, not waited for.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(max(1.0, 10 * self.tick))
            if thread.is_alive():
                log.warning("watchdog %s: thread did not stop (on_expire hung?)", self.path)
        self._close_fds()
        if remove_fifo:
            self.path.unlink(missing_ok=True)

    def _close_fds(self) -> None:
        for fd in (self._wfd, self._rfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._rfd = self._wfd = None

    # -- watchdog thread --------------------------------------------------------------

    def _run(self) -> None:
        rfd = self._rfd
        assert rfd is not None
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([rfd], [], [], self.tick)
                data = os.read(rfd, 4096) if readable else b""
            except BlockingIOError:
                data = b""
            except OSError:
                if self._stop.is_set():
                    return
                raise
            if data:
                self._receive(data)
            if self._check_expiry():
                self._fire()

    def _receive(self, data: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            for byte in data:
                if byte == MAGIC_CLOSE:
                    self._armed = False
                    self._disarms += 1
                else:
                    self._armed = True
                    self._feeds += 1
                    self._last_feed = now

    def _check_expiry(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if not self._armed or self._last_feed is None:
                return False
            if now - self._last_feed < self.timeout:
                return False
            self._armed = False
            self._expiries.append(now)
            return True

    def _fire(self) -> None:
        log.info("watchdog %s expired after %.3fs without keepalive", self.path, self.timeout)
        try:
            self._on_expire()
        except Exception:
            log.exception("watchdog %s: on_expire failed", self.path)
