"""Run a `tick()` every few seconds, as an asyncio task or in a thread, until stopped.

The simulators (kubelet, node lifecycle) are a sync `tick` over the thread-safe store plus
this loop, so tests can call `tick()` directly and time nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from nodefence.hwsim.kube.errors import ApiError

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick` at once and then every `interval` seconds; an ApiError is logged, not fatal."""

    def __init__(self, tick: Callable[[], None], interval: float, name: str) -> None:
        self._tick = tick
        self.interval = interval
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except ApiError as exc:  # the next tick retries; a real kubelet also just logs
            log.warning("%s: %s (%s)", self.name, exc.message, exc.reason)

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._safe_tick()
            await asyncio.sleep(self.interval)

    def start(self) -> asyncio.Task[None]:
        """Run as a task on the running loop."""
        if self._task is not None or self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self._task

    async def stop(self) -> None:
        """Stop the task started by `start`. Idempotent."""
        task, self._task = self._task, None
        self._stop.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def start_in_thread(self) -> None:
        """Run in a daemon thread."""
        if self._task is not None or self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                self._safe_tick()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop the thread started by `start_in_thread` and join it. Idempotent."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout)


class PeriodicController:
    """Start/stop methods of a simulator that runs a `Periodic` named `_loop`."""

    _loop: Periodic

    def start(self) -> asyncio.Task[None]:
        """Run as a task on the running loop."""
        return self._loop.start()

    async def stop(self) -> None:
        """Stop the task."""
        await self._loop.stop()

    def start_in_thread(self) -> None:
        """Run in a daemon thread."""
        self._loop.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the thread."""
        self._loop.stop_thread()
