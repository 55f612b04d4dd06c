"""A per-node network link: a TCP forwarder that can be cut while both ends keep running.

`TcpRelay` listens on 127.0.0.1 (ephemeral port) and forwards each connection to
`(target_host, target_port)`. A simulated node's agent talks to the broker or API server
through its relay, so the test can partition that node alone:

- ``cut("blackhole")``: a real partition. Existing connections stop forwarding in both
  directions (data is read and dropped, sockets stay open, so each peer sees silence and
  must time out by itself); new connections are accepted but never connected to the
  target, and held silent.
- ``cut("reset")``: existing connections are reset (RST); new ones are accepted and reset
  at once.
- ``heal()``: connections held during a blackhole are reset (as their peers' TCP stacks
  would have done after timing out); new connections are forwarded normally again.

The relay runs on an asyncio loop in a daemon thread; its methods are called from blocking
code and take effect before they return. Per-connection buffering is bounded by asyncio's
stream limits (64 KiB per direction and side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from nodefence.hwsim.loop_thread import LoopThread

log = logging.getLogger(__name__)

CutMode = Literal["blackhole", "reset"]

CHUNK = 65536
CONNECT_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


@dataclass(eq=False)
class _Link:
    """One client connection and, once connected, its target connection."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    held: bool = False  # partitioned: read and drop, closed on heal
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Abort both sides with RST and stop the handler."""
        for writer in (self.client, self.target):
            if writer is not None:
                _abort(writer)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close `writer`'s socket with RST (SO_LINGER 0) instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpRelay:
    """A TCP forwarder from 127.0.0.1:`port` to `(target_host, target_port)`."""

    def __init__(self, target_host: str, target_port: int, name: str = "") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name or f"relay-{target_host}:{target_port}"
        self.connections_total = 0
        self.connections_open = 0
        self.bytes_forwarded = 0
        self._mode: CutMode | None = None
        self._links: set[_Link] = set()
        self._loop: LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The listening port on 127.0.0.1 (after `start()`)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def is_cut(self) -> bool:
        """True between `cut()` and `heal()`."""
        return self._mode is not None

    @property
    def cut_mode(self) -> CutMode | None:
        """The current cut mode, or None when the link is healthy."""
        return self._mode

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 on an ephemeral port."""
        if self._loop is not None:
            raise RuntimeError(f"{self.name} already started")
        self._loop = LoopThread(name=f"hwsim-{self.name}")
        try:
            self._server = self._loop.run(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=CHUNK)
            )
        except BaseException:
            self._close_loop()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        log.debug("%s: 127.0.0.1:%d -> %s:%d", self.name, self._port, *self._target)

    def stop(self) -> None:
        """Close the listener and every connection, then the loop (idempotent, bounded)."""
        if self._loop is None:
            return
        try:
            self._loop.run(self._shutdown(), timeout=STOP_TIMEOUT)
        except TimeoutError:
            log.warning("%s: shutdown timed out", self.name)
        finally:
            self._close_loop()
            self._server = None
            self._port = None

    def _close_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
            if not loop.loop.is_running():
                loop.loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            link.reset()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults -----------------------------------------------------------------------

    def cut(self, mode: CutMode = "blackhole") -> None:
        """Partition the link: "blackhole" drops silently, "reset" resets connections."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self._call(lambda: self._cut(mode))

    def heal(self) -> None:
        """Restore the link; connections held during the cut are reset."""
        self._call(self._heal)

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the relay's loop (or here if not started) and wait for it."""
        if self._loop is None:
            fn()
            return

        async def run() -> None:
            fn()

        self._loop.run(run())

    def _cut(self, mode: CutMode) -> None:
        self._mode = mode
        for link in list(self._links):
            if mode == "reset":
                link.reset()
            else:
                link.held = True
        log.info("%s: cut (%s)", self.name, mode)

    def _heal(self) -> None:
        self._mode = None
        for link in list(self._links):
            if link.held:
                link.reset()
        log.info("%s: healed", self.name)

    # -- connections ------------------------------------------------------------------

    @property
    def _target(self) -> tuple[str, int]:
        return self.target_host, self.target_port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer, task=asyncio.current_task())
        self._links.add(link)
        self.connections_total += 1
        self.connections_open += 1
        try:
            await self._serve(link, reader)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("%s: connection ended: %r", self.name, exc)
        except asyncio.CancelledError:
            pass  # reset by cut(), heal() or stop()
        finally:
            self._links.discard(link)
            self.connections_open -= 1
            for w in (link.client, link.target):
                if w is not None and not w.transport.is_closing():
                    w.transport.abort()

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        if self._mode == "reset":
            link.reset()
            return
        if self._mode == "blackhole":
            link.held = True
            await self._drop(reader)
            return
        treader, twriter = await asyncio.wait_for(
            asyncio.open_connection(*self._target, limit=CHUNK), CONNECT_TIMEOUT
        )
        link.target = twriter
        if self._mode is not None:  # cut while connecting
            twriter.transport.abort()
            link.target = None
            if self._mode == "reset":
                link.reset()
                return
            link.held = True
            await self._drop(reader)
            return
        await asyncio.gather(
            self._pump(link, reader, twriter),
            self._pump(link, treader, link.client),
        )

    @staticmethod
    async def _drop(reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass

    async def _pump(
        self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        """Copy `src` to `dst` until EOF; while `link` is held, read and drop."""
        try:
            while data := await src.read(CHUNK):
                if link.held:
                    continue
                dst.write(data)
                await dst.drain()
                self.bytes_forwarded += len(data)
        except OSError as exc:
            log.debug("%s: %r", self.name, exc)
            if not link.held:
                link.reset()  # one side was reset: pass it on
            return
        if not link.held and dst.can_write_eof() and not dst.transport.is_closing():
            with contextlib.suppress(OSError):
                dst.write_eof()
