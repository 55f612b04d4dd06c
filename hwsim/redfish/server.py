"""The HTTP(S) transport of the Redfish emulator: threads, TLS and transport-level faults.

One `ThreadingHTTPServer` per BMC, serving from a background thread with one thread per
connection, so many emulators run in one process next to an asyncio test. `stop()` never waits
on a client: it wakes held (`unreachable`) and slow handlers, shuts every open connection down
and joins the handler threads with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish.resources import DEFAULT_RESET_TYPES
from nodefence.hwsim.redfish.service import RedfishOptions, RedfishService, Reply, error
from nodefence.hwsim.tls import TlsFiles, server_context

log = logging.getLogger("nodefence.hwsim.redfish")

_MAX_BODY = 1 << 20
_HANDSHAKE_TIMEOUT = 10.0  # a client that connects over TLS and never says hello
_IDLE_TIMEOUT = 60.0  # an idle keep-alive connection
_STOP_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class RawAnswer:
    """An HTTP answer written byte for byte as given, for robustness tests of Redfish clients.

    `status_line` (without CRLF) defaults to `HTTP/1.1 {status} X`; `headers` are sent as
    given, plus `Content-Length: {content_length}` unless it is None (then no length is sent:
    the body ends when the connection closes). `body` is bytes or an iterable of chunks (a
    huge body need not be held in memory), written with `drip` seconds between chunks. The
    connection is closed after the answer, so a short body reads as truncated.
    """

    status: int = 200
    headers: Sequence[tuple[str, str]] = (("Content-Type", "application/json"),)
    body: bytes | Iterable[bytes] = b""
    content_length: int | None = None
    drip: float = 0.0
    status_line: bytes | None = None

    def chunks(self) -> Iterable[bytes]:
        """The body as chunks."""
        return [self.body] if isinstance(self.body, bytes) else self.body


# (method, path) -> a raw answer to send instead of the service's, or None to serve normally.
RedfishTamper = Callable[[str, str], RawAnswer | None]


class RedfishBmc:
    """A Redfish BMC on 127.0.0.1 (HTTP, or HTTPS with `tls`) serving `machines` as Systems.

    Use `await start()` then `url`/`port`; `await stop()` (or `async with`) releases everything.
    The keyword options are those of `RedfishOptions` (see there), and `channel`: the name
    whose faults this service shows (`SimMachine.faults_of`); `service` is the state behind
    the wire, for tests (`active_sessions()`, `drop_sessions()`).
    """

    def __init__(
        self,
        machines: Sequence[SimMachine],
        username: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        *,
        sessions: bool = True,
        basic_auth: bool = True,
        reset_types: Sequence[str] | None = DEFAULT_RESET_TYPES,
        reset_types_via_action_info: bool = False,
        reject_noop_reset: bool = False,
        channel: str = "redfish",
        protect_root: bool = False,
    ) -> None:
        options = RedfishOptions(
            sessions=sessions,
            basic_auth=basic_auth,
            reset_types=reset_types,
            reset_types_via_action_info=reset_types_via_action_info,
            reject_noop_reset=reject_noop_reset,
            protect_root=protect_root,
        )
        self.service = RedfishService(machines, username, password, options, channel)
        self.host = host
        self.port = port
        self.tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tamper: RedfishTamper | None = None

    @property
    def tamper(self) -> RedfishTamper | None:
        """A hook that may answer a request with a `RawAnswer` (malformed on purpose)."""
        return self._tamper

    @tamper.setter
    def tamper(self, hook: RedfishTamper | None) -> None:
        self._tamper = hook
        if self._server is not None:
            self._server.tamper = hook

    @property
    def url(self) -> str:
        """`scheme://host:port` of the running service."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve in a background thread; `port` is then the bound port."""
        if self._server is not None:
            raise RuntimeError("RedfishBmc already started")
        context = server_context(self.tls) if self.tls else None
        server = _Server((self.host, self.port), self.service, context)
        server.tamper = self._tamper
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"redfish-bmc:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.debug("redfish bmc listening", extra={"url": self.url})

    async def stop(self) -> None:
        """Stop serving and close every connection; safe to call more than once."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, _STOP_JOIN_TIMEOUT)
            self._thread = None

    async def __aenter__(self) -> RedfishBmc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        service: RedfishService,
        context: ssl.SSLContext | None,
    ) -> None:
        self.service = service
        self.context = context
        self.tamper: RedfishTamper | None = None
        self.stopping = threading.Event()
        self._guard = threading.Lock()
        self._open: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own worker bookkeeping (instead of ThreadingMixIn's) so stop() can join with a
        # deadline rather than waiting on a client.
        worker = threading.Thread(
            target=self._work, args=(request, client_address), name="redfish-conn", daemon=True
        )
        with self._guard:
            self._workers.add(worker)
        worker.start()

    def _work(self, request: socket.socket, client_address: Any) -> None:
        conn: socket.socket = request
        self._track(conn)
        try:
            if self.context is not None:
                # The handshake runs here, in the connection's thread: a silent client must not
                # stall the accept loop.
                request.settimeout(_HANDSHAKE_TIMEOUT)
                conn = self.context.wrap_socket(request, server_side=True)
                self._track(conn, replacing=request)
            if not self.stopping.is_set():
                _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError) as exc:
            log.debug("redfish connection ended: %s", exc)
        except Exception:
            log.exception("redfish connection failed")
        finally:
            self._untrack(conn)
            _close(conn)
            with self._guard:
                self._workers.discard(threading.current_thread())

    def _track(self, conn: socket.socket, replacing: socket.socket | None = None) -> None:
        with self._guard:
            if replacing is not None:
                self._open.discard(replacing)
            self._open.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._guard:
            self._open.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("redfish request error from %s", client_address, exc_info=True)

    def stop(self) -> None:
        """Wake held handlers, stop accepting, shut connections down, join workers."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._guard:
            conns, workers = list(self._open), list(self._workers)
        for conn in conns:
            # The plain-socket shutdown, also for TLS sockets: it unblocks a reader in any
            # thread without touching the TLS object that thread is using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        deadline = time.monotonic() + _STOP_JOIN_TIMEOUT
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("redfish connection thread did not stop", extra={"thread": worker})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT
    # Buffered writes (flushed once per request by http.server) and no Nagle: headers and body
    # leave in one segment, so clients do not stall on delayed ACKs (~40 ms a request).
    wbufsize = -1
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        server = self.server
        body = self._read_body()
        if body is None:
            return
        faults = server.service.machine_for(self.path).faults_of(server.service.channel)
        if faults.unreachable:
            self._hold()
            return
        if faults.slow > 0 and server.stopping.wait(faults.slow):
            self.close_connection = True
            return
        tamper = server.tamper
        raw = tamper(method, self.path) if tamper is not None else None
        if raw is not None:
            self._send_raw(raw)
            return
        try:
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = server.service.handle(method, self.path, headers, body)
        except Exception:
            log.exception("redfish emulator failed on %s %s", method, self.path)
            reply = error(500, "InternalError", "The emulator failed on this request.")
        self._send(reply, head=method == "HEAD")

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "LengthRequired", "Send a Content-Length; chunked is not supported.")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._refuse(400, "MalformedJSON", "Content-Length is invalid or too large.")
            return None
        return self.rfile.read(length) if length else b""

    def _refuse(self, status: int, message_id: str, message: str) -> None:
        self.close_connection = True
        self._send(error(status, message_id, message))

    def _hold(self) -> None:
        """Say nothing until the client gives up or the server stops (fault `unreachable`)."""
        self.close_connection = True
        conn = self.connection
        while not self.server.stopping.is_set():
            readable, _, _ = select.select([conn], [], [], 0.1)
            if not readable:
                continue
            try:
                if not conn.recv(4096):
                    return  # the client closed
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return

    def _send(self, reply: Reply, head: bool = False) -> None:
        if reply.text is not None:
            payload = reply.text.encode()
        else:
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if reply.body is not None or reply.text is not None:
            self.send_header("Content-Type", reply.media_type)
        self.send_header("OData-Version", "4.0")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _send_raw(self, raw: RawAnswer) -> None:
        """Write `raw` as given, then close the connection (the client may hang up early)."""
        self.close_connection = True
        head = f"HTTP/1.1 {raw.status} X".encode() if raw.status_line is None else raw.status_line
        lines = [head] + [f"{name}: {value}".encode() for name, value in raw.headers]
        if raw.content_length is not None:
            lines.append(f"Content-Length: {raw.content_length}".encode())
        lines.append(b"Connection: close")
        try:
            self.wfile.write(b"\r\n".join(lines) + b"\r\n\r\n")
            self.wfile.flush()
            for chunk in raw.chunks():
                if raw.drip > 0 and self.server.stopping.wait(raw.drip):
                    return
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError as exc:  # the client stopped reading (e.g. refused a huge body)
            log.debug("redfish raw answer cut short: %s", exc)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own parse errors (bad request line, oversized headers, unknown method):
        # answer them as Redfish JSON errors and close the connection. A request line too broken
        # to name a version still gets a status line (http.server would assume HTTP/0.9).
        self.close_connection = True
        self.request_version = "HTTP/1.1"
        status = HTTPStatus(code)
        headers: dict[str, str] = {}
        if status == HTTPStatus.NOT_IMPLEMENTED:
            # A method http.server has no handler for: not allowed on this URI (if it exists).
            status = HTTPStatus.METHOD_NOT_ALLOWED
            allowed = self.server.service.allowed(getattr(self, "path", "") or "")
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        text = message or status.phrase
        reply = error(status.value, "GeneralError", text)
        self._send(Reply(reply.status, reply.body, headers))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("redfish %s: " + format, self.address_string(), *args)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()
