"""The IPMI worker process: `python -m nodefence.backends.ipmi.worker FD`, started by
`nodefence.backends.ipmi.pool`.

FD is this process's end of a socket pair with the backend; the messages are those of
`nodefence.backends.ipmi.wire`. One worker serves one backend, one request at a time. A reader
thread takes requests off the socket; when the socket closes (the backend closed it, or its process
died) the worker exits at once, whatever pyghmi is doing, so nothing it started goes on
without the backend. The backend kills the worker (SIGKILL) when it gives up on a call.
Standard output is not used (pyghmi may print); nothing here logs a secret.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading

from nodefence.backends.errors import BmcProtocolError, FenceError
from nodefence.backends.ipmi.wire import (
    Answer,
    Command,
    Failure,
    FrameReader,
    Logout,
    Message,
    Open,
    Ready,
    WireError,
    encode,
)


class _Channel:
    """This end of the socket pair: framed writes from any thread, one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._write_lock = threading.Lock()

    def send(self, message: Message) -> None:
        frame = encode(message)
        try:
            with self._write_lock:
                self._sock.sendall(frame)
        except OSError:
            os._exit(0)  # the backend is gone: so are we

    def read_forever(self, inbox: queue.SimpleQueue[Message]) -> None:
        """Put every request in `inbox`; end the whole process when the stream ends."""
        reader = FrameReader()
        try:
            while chunk := self._sock.recv(65536):
                for message in reader.feed(chunk):
                    inbox.put(message)
        except (OSError, WireError):
            pass
        os._exit(0)


def serve(channel: _Channel, inbox: queue.SimpleQueue[Message]) -> None:
    """Answer requests in order until the process is ended."""
    # Slow imports: after the reader runs.
    from nodefence.backends.ipmi import pyghmi_patches as ipmi_pyghmi_patches
    from nodefence.backends.ipmi.console import IpmiConsole, warm_up

    ipmi_pyghmi_patches.apply()
    warm_up()
    channel.send(Ready())
    console: IpmiConsole | None = None
    while True:
        message = inbox.get()
        if isinstance(message, Open):
            console = IpmiConsole(message, channel.send)
        elif isinstance(message, Command | Logout):
            channel.send(_answer(console, message))
        else:
            channel.send(Failure(0, "BmcProtocolError", f"unexpected {type(message).__name__}"))


def _answer(console: object, request: Command | Logout) -> Answer | Failure:
    from nodefence.backends.ipmi.console import IpmiConsole

    if not isinstance(console, IpmiConsole):
        return Failure(request.id, "BmcProtocolError", "IPMI worker got a request before Open")
    try:
        if isinstance(request, Logout):
            console.logout()
            return Answer(request.id)
        return Answer(request.id, console.request(request.netfn, request.command, request.data))
    except FenceError as err:
        return Failure(request.id, type(err).__name__, err.message)
    except Exception as err:  # a bug here must reach the backend as a failed request
        failure = BmcProtocolError(f"IPMI worker failed: {type(err).__name__}")
        return Failure(request.id, type(failure).__name__, failure.message)


def main(argv: list[str]) -> int:
    """Serve the backend on the socket whose descriptor is `argv[0]`."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m nodefence.backends.ipmi.worker FD", file=sys.stderr)
        return 2
    channel = _Channel(socket.socket(fileno=int(argv[0])))
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    threading.Thread(
        target=channel.read_forever, args=(inbox,), name="backend", daemon=True
    ).start()
    serve(channel, inbox)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
