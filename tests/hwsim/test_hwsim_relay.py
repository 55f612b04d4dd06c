"""The per-node TCP relay: forwarding, blackhole and reset cuts, heal, stop, HTTP through it."""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from nodefence.hwsim.relay import TcpRelay
from tests.support.wait import eventually_blocking

SILENCE = 0.3


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def recv_or_eof(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """One recv; a reset counts as EOF (b"")."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def is_silent(sock: socket.socket, within: float = SILENCE) -> bool:
    """True if nothing (no data, no EOF, no reset) arrives on `sock` within `within` s."""
    sock.settimeout(within)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    return False


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=2.0)


def connect_is_reset(port: int) -> bool:
    """True if a new connection is reset (at connect or first read) or sees EOF."""
    try:
        with connect(port) as c:
            return recv_or_eof(c) == b""
    except ConnectionResetError:
        return True


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """`server` answering in a thread; its port. Shut down and closed after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def echo_port() -> Iterator[int]:
    with serving(_EchoServer(("127.0.0.1", 0), _Echo)) as port:
        yield port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bare target socket, so a test controls both ends of a relayed connection."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(2.0)
    with sock:
        yield sock


@pytest.fixture
def relay(echo_port: int) -> Iterator[TcpRelay]:
    r = TcpRelay("127.0.0.1", echo_port, name="node-1")
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def raw_relay(listener: socket.socket) -> Iterator[TcpRelay]:
    r = TcpRelay("127.0.0.1", listener.getsockname()[1])
    r.start()
    try:
        yield r
    finally:
        r.stop()


def test_bytes_echo_through_the_relay(relay: TcpRelay) -> None:
    with connect(relay.port) as c:
        c.sendall(b"ping")
        assert recv_or_eof(c) == b"ping"
        assert relay.connections_total == 1
        assert relay.connections_open == 1
    eventually_blocking(
        "relay.connections_open == 0", lambda: relay.connections_open == 0, timeout=2.0
    )
    assert relay.bytes_forwarded == 8
    assert not relay.is_cut


def test_a_megabyte_each_way_flows_with_bounded_buffers(relay: TcpRelay) -> None:
    payload = bytes(range(256)) * 4096
    with connect(relay.port) as c:
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = recv_or_eof(c, 5.0)
            assert chunk
            got += chunk
        sender.join(5)
    assert bytes(got) == payload


def test_blackhole_silences_both_directions_and_keeps_sockets_open(
    raw_relay: TcpRelay, listener: socket.socket
) -> None:
    with connect(raw_relay.port) as client:
        server, _ = listener.accept()
        with server:
            client.sendall(b"before")
            assert recv_or_eof(server) == b"before"
            raw_relay.cut()
            assert raw_relay.is_cut
            client.sendall(b"to server")
            server.sendall(b"to client")
            assert is_silent(server)
            assert is_silent(client)
            assert raw_relay.connections_open == 1


def test_blackhole_accepts_new_connections_but_never_reaches_the_target(
    raw_relay: TcpRelay, listener: socket.socket
) -> None:
    raw_relay.cut("blackhole")
    with connect(raw_relay.port) as client:
        client.sendall(b"hello?")
        assert is_silent(client)
        listener.settimeout(SILENCE)
        with pytest.raises(TimeoutError):
            listener.accept()
        assert raw_relay.connections_open == 1


def test_blackhole_on_echo_gives_no_reply(relay: TcpRelay) -> None:
    with connect(relay.port) as old:
        old.sendall(b"a")
        assert recv_or_eof(old) == b"a"
        relay.cut()
        old.sendall(b"b")
        assert is_silent(old)
        with connect(relay.port) as new:
            new.sendall(b"c")
            assert is_silent(new)


def test_heal_closes_held_connections_and_forwards_new_ones(relay: TcpRelay) -> None:
    with connect(relay.port) as old:
        old.sendall(b"a")
        assert recv_or_eof(old) == b"a"
        relay.cut()
        with connect(relay.port) as held:
            assert is_silent(held, 0.05)
            relay.heal()
            assert not relay.is_cut
            assert recv_or_eof(old) == b""
            assert recv_or_eof(held) == b""
    with connect(relay.port) as fresh:
        fresh.sendall(b"again")
        assert recv_or_eof(fresh) == b"again"
    eventually_blocking(
        "relay.connections_open == 0", lambda: relay.connections_open == 0, timeout=2.0
    )


def test_reset_closes_existing_and_new_connections(relay: TcpRelay) -> None:
    with connect(relay.port) as old:
        old.sendall(b"a")
        assert recv_or_eof(old) == b"a"
        relay.cut("reset")
        assert relay.cut_mode == "reset"
        assert recv_or_eof(old) == b""
        with contextlib.suppress(OSError):
            old.sendall(b"b")
    assert connect_is_reset(relay.port)
    eventually_blocking(
        "relay.connections_open == 0", lambda: relay.connections_open == 0, timeout=2.0
    )
    relay.heal()
    with connect(relay.port) as healed:
        healed.sendall(b"c")
        assert recv_or_eof(healed) == b"c"


def test_reset_is_seen_as_connection_reset(relay: TcpRelay) -> None:
    with connect(relay.port) as c:
        c.sendall(b"a")
        assert recv_or_eof(c) == b"a"
        relay.cut("reset")
        c.settimeout(2.0)
        with pytest.raises(ConnectionResetError):
            c.recv(1)


def test_target_down_closes_the_client(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    r = TcpRelay("127.0.0.1", port)
    r.start()
    try:
        with connect(r.port) as c:
            assert recv_or_eof(c) == b""
        eventually_blocking("r.connections_open == 0", lambda: r.connections_open == 0, timeout=2.0)
        assert r.connections_total == 1
    finally:
        r.stop()


def test_stop_is_idempotent_and_frees_the_port(echo_port: int) -> None:
    r = TcpRelay("127.0.0.1", echo_port)
    r.start()
    port = r.port
    c = connect(port)
    c.sendall(b"x")
    assert recv_or_eof(c) == b"x"
    r.stop()
    r.stop()
    assert recv_or_eof(c) == b""
    c.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    with socket.create_server(("127.0.0.1", port)):
        pass
    with pytest.raises(RuntimeError):
        _ = r.port


def test_cut_before_start_applies_once_started(echo_port: int) -> None:
    r = TcpRelay("127.0.0.1", echo_port)
    r.cut("reset")
    r.start()
    try:
        assert connect_is_reset(r.port)
        r.heal()
        with connect(r.port) as c:
            c.sendall(b"ok")
            assert recv_or_eof(c) == b"ok"
    finally:
        r.stop()
    with pytest.raises(ValueError):
        r.cut("drop")  # type: ignore[arg-type]


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.daemon_threads = True
    with serving(server) as port:
        yield port


def test_http_through_the_relay_and_a_client_timeout_when_cut(http_port: int) -> None:
    r = TcpRelay("127.0.0.1", http_port, name="apiserver")
    r.start()
    try:
        url = f"http://127.0.0.1:{r.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            assert resp.read() == b"hello /healthz"
        r.cut()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(url, timeout=SILENCE)
        r.heal()
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == b"hello /healthz"
    finally:
        r.stop()
