"""What each client costs the API server: requests, bytes and watches, by client.

A client is named by its User-Agent (nodefence's agents send `nodefence/<role>`, see
`nodefence.agent.kube.client.load_api_client`). The emulator counts every request it answers, the
bytes of every body it sends (the events of a watch included, as they are written) and receives, and
the watches each client holds open; `bench/api_load.py` reads these counters. Lists are split into
those a real API server answers from its watch cache (`resourceVersion=0`, or a continue token)
and quorum reads (no resourceVersion: every object read from etcd).
Thread-safe: the server writes from its event loop, a bench reads from its own thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace


@dataclass
class ClientTraffic:
    """The counters of one client."""

    requests: int = 0  # every request, each watch once
    bytes_out: int = 0  # response bodies sent to it, watch events included
    bytes_in: int = 0  # request bodies it sent
    watches: int = 0  # watch requests
    open_watches: int = 0  # watches open now
    lists: int = 0
    quorum_lists: int = 0  # lists without a resourceVersion: etcd reads on a real server
    writes: int = 0  # create, update, patch, delete


class Traffic:
    """Per-client counters (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, ClientTraffic] = {}

    def _of(self, client: str) -> ClientTraffic:
        found = self._clients.get(client)
        if found is None:
            found = self._clients[client] = ClientTraffic()
        return found

    def request(
        self,
        client: str,
        verb: str,
        *,
        bytes_in: int = 0,
        bytes_out: int = 0,
        quorum: bool = False,
    ) -> None:
        """One request answered (a watch: when it opens; its events come by `sent`)."""
        with self._lock:
            c = self._of(client)
            c.requests += 1
            c.bytes_in += bytes_in
            c.bytes_out += bytes_out
            if verb == "watch":
                c.watches += 1
                c.open_watches += 1
            elif verb == "list":
                c.lists += 1
                c.quorum_lists += int(quorum)
            elif verb not in ("get",):
                c.writes += 1

    def sent(self, client: str, size: int) -> None:
        """`size` more bytes of a watch stream written to `client`."""
        with self._lock:
            self._of(client).bytes_out += size

    def watch_closed(self, client: str) -> None:
        """One of `client`'s watches ended."""
        with self._lock:
            c = self._of(client)
            c.open_watches = max(0, c.open_watches - 1)

    def snapshot(self) -> dict[str, ClientTraffic]:
        """A copy of every client's counters."""
        with self._lock:
            return {name: replace(c) for name, c in self._clients.items()}
