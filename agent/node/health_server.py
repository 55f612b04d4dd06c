"""The agent's HTTP health endpoint: probed by peers (is this node's agent alive?) and by the
kubelet (liveness/readiness). Minimal HTTP/1.1 on asyncio streams, no framework.

- `GET /healthz`: 200 with `{"node", "boot", "broker"}` while the agent's loop runs.
- `GET /readyz`: 200 when connected to the broker, else 503.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

MAX_REQUEST_LINE = 2048


class HealthServer:
    """Serves the health endpoint until `stop()`; `port` is known after `start()`."""

    def __init__(
        self, host: str, port: int, info: Callable[[], dict[str, Any]], ready: Callable[[], bool]
    ) -> None:
        self.host = host
        self.port = port
        self._info = info
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and serve in the background."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            while True:  # skip headers
                header = await asyncio.wait_for(reader.readline(), 2.0)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line[:MAX_REQUEST_LINE].decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            body: dict[str, Any]
            if parts[:1] != ["GET"]:
                code, body = 405, {"error": "only GET"}
            elif path == "/healthz":
                code, body = 200, self._info()
            elif path == "/readyz":
                ok = self._ready()
                code, body = (200 if ok else 503), {"ready": ok}
            else:
                code, body = 404, {"error": "not found"}
            data = json.dumps(body).encode()
            reason = {
                200: "OK",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }[code]
            writer.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()


async def probe(host: str, port: int, timeout: float) -> bool:
    """True when an agent answers `GET /healthz` with 200 within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    b"GET /healthz HTTP/1.1\r\nHost: nodefence\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
        return status.split()[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
