"""A watch subscription: a thread-safe queue of events, readable from threads or asyncio.

The store pushes events under its lock, so every watcher sees one global order. A reader in a
thread calls `get(timeout)`; a coroutine calls `await aget(timeout)` and is woken through its
own loop, whatever thread the write happened in.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    """`type` is ADDED, MODIFIED, DELETED, BOOKMARK or ERROR; `object` is the full object."""

    type: str
    object: Obj

    def to_json(self) -> Obj:
        """The wire form, one JSON line of a watch stream."""
        return {"type": self.type, "object": self.object}


class Watcher:
    """Events for one subscription, in store order, until `close()`."""

    def __init__(self, on_close: Callable[[Watcher], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._events: deque[WatchEvent] = deque()
        self._closed = False
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_close = on_close

    @property
    def closed(self) -> bool:
        """True once closed (events already queued can still be read)."""
        return self._closed

    def push(self, event: WatchEvent) -> None:
        """Queue an event (ignored after close) and wake every reader."""
        with self._cond:
            if self._closed:
                return
            self._events.append(event)
            self._wake()

    def close(self) -> None:
        """Stop receiving; readers get what is queued, then None. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._wake()
        if self._on_close is not None:
            self._on_close(self)

    def _wake(self) -> None:
        self._cond.notify_all()
        for loop, event in self._wakers:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody to wake
                loop.call_soon_threadsafe(event.set)

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, waiting up to `timeout` seconds; None on timeout or when closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._events.popleft()

    async def aget(self, timeout: float | None = None) -> WatchEvent | None:
        """`get` for coroutines: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wake = asyncio.Event()
            with self._cond:
                if self._events:
                    return self._events.popleft()
                if self._closed:
                    return None
                self._wakers.append((loop, wake))
            try:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return None
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    return None
            finally:
                with self._cond:
                    self._wakers.remove((loop, wake))

    def __iter__(self) -> Iterator[WatchEvent]:
        """Every event until the watcher is closed."""
        while (event := self.get()) is not None:
            yield event

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
