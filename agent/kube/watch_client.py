"""Lists and watches of raw JSON, for the informer caches (`nodefence.agent.kube.informer_loop`).

A mixin of `nodefence.agent.kube.client.ClusterApi`, like `nodefence.agent.kube.release_client`. A
list reads one page; a watch is a `WatchStream`: the blocking client reads the chunked response in a
thread of its own (never the default executor: a watch holds its thread for minutes, and every other
API call needs one) and hands the events to the event loop in batches, so thousands of Lease
renewals a second cost one wake-up per batch, not one per event. Events stay raw dicts; the informer
turns them into nodefence's values.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import ClusterError, NotFound, api_error

RawEvent = dict[str, Any]
# A watch asks the server to end it after 5 to 10 minutes, as client-go's reflector does, so
# that reconnections of thousands of agents spread out; the informer resumes from its version.
WATCH_SECONDS = (300, 600)
# The socket read deadline of a watch, past the informer's own stall limit: a connection that
# went silent (no event, no bookmark) is dropped even if nobody closes it.
READ_GRACE = 15.0
# A page of thousands of Nodes is tens of megabytes: longer than a single call's deadline.
LIST_SECONDS = 60.0


@dataclass(frozen=True)
class Collection:
    """Where one kind of object is listed and watched: its API group, version, resource
    (plural) and namespace (None: cluster-wide), narrowed by selectors."""

    what: str  # in messages: "nodes", "node leases", ...
    group: str
    version: str
    plural: str
    namespace: str | None = None
    label_selector: str = ""
    field_selector: str = ""
    optional: bool = False  # a custom resource that may not be installed: absent is empty


@dataclass(frozen=True)
class Page:
    """One page of a list: raw items, the list's resourceVersion, the continue token."""

    items: list[dict[str, Any]]
    resource_version: str
    next: str = ""  # "" on the last page


class WatchStream(Protocol):
    """The events of one watch request, in the server's order."""

    async def next(self, timeout: float) -> list[RawEvent] | None:
        """Every event that arrived, waiting up to `timeout` seconds for the first: [] when
        none came in time, None once the stream has ended. Raises `ClusterError` if the
        request failed (`Gone`: its resourceVersion expired; `Forbidden`, ...)."""
        ...

    def close(self) -> None:
        """Stop reading (idempotent)."""
        ...


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated JSON documents of a chunked watch response, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class ThreadStream:
    """A `WatchStream` read by a dedicated daemon thread (see the module doc)."""

    def __init__(self, what: str, request: Callable[[], Any]) -> None:
        self.what = what
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._events: collections.deque[RawEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._flagged = False
        self._ended = False
        self._closed = False
        self._error: ClusterError | None = None
        self._response: Any = None
        self._thread = threading.Thread(target=self._read, name=f"watch {what}", daemon=True)
        self._thread.start()

    def _signal(self) -> None:
        if not self._flagged:
            self._flagged = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                self._loop.call_soon_threadsafe(self._wake.set)

    def _read(self) -> None:
        try:
            self._response = self._request()
            if self._closed:
                return
            for line in _lines(self._response):
                if self._closed:
                    return
                event = json.loads(line)
                if isinstance(event, dict):
                    self._events.append(event)
                    self._signal()
        except Exception as err:  # read timeout, reset, an HTTP error: the stream ends
            if not self._closed:
                self._error = api_error(f"watch {self.what}", err)
        finally:
            self._ended = True
            self._signal()
            with contextlib.suppress(Exception):
                if self._response is not None:
                    self._response.close()  # never back to the pool half read

    async def next(self, timeout: float) -> list[RawEvent] | None:
        """See `WatchStream.next`."""
        while True:
            if self._events:
                batch = list(self._events)
                for _ in batch:
                    self._events.popleft()
                return batch
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._wake.clear()
            self._flagged = False
            if self._events or self._ended:
                continue  # arrived between the check and the clear
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []

    def close(self) -> None:
        """See `WatchStream.close`: the thread stops at its next read (at once where urllib3
        can interrupt a blocking read)."""
        self._closed = True
        response = self._response
        if response is not None:
            for method in ("shutdown", "close"):
                with contextlib.suppress(Exception):
                    getattr(response, method, lambda: None)()


class WatchCalls(ClientBase):
    """Raw lists and watches of any `Collection` (see the module doc)."""

    def _lister(self, c: Collection) -> Callable[..., Any]:
        """The client method that lists (and, with watch=True, watches) `c`."""
        if c.group == "" and c.plural == "nodes":
            return self.core.list_node
        if c.group == "coordination.k8s.io" and c.plural == "leases" and c.namespace:
            ns = c.namespace
            return lambda **kw: self.coordination.list_namespaced_lease(ns, **kw)
        if c.group == "storage.k8s.io" and c.plural == "volumeattachments":
            return self.storage.list_volume_attachment
        if c.namespace:
            ns = c.namespace
            return lambda **kw: self.custom.list_namespaced_custom_object(
                c.group, c.version, ns, c.plural, **kw
            )
        return lambda **kw: self.custom.list_cluster_custom_object(
            c.group, c.version, c.plural, **kw
        )

    def _selectors(self, c: Collection) -> dict[str, str]:
        out = {}
        if c.label_selector:
            out["label_selector"] = c.label_selector
        if c.field_selector:
            out["field_selector"] = c.field_selector
        return out

    async def list_page(
        self, c: Collection, *, resource_version: str = "0", limit: int = 500, cont: str = ""
    ) -> Page:
        """One page of `c`. The first page asks for `resource_version` ("0": whatever the API
        server's watch cache holds, no quorum read of etcd); later ones pass the continue
        token. An absent optional resource (404) is an empty last page."""
        lister = self._lister(c)
        params: dict[str, Any] = {"limit": limit, **self._selectors(c)}
        if cont:
            params["_continue"] = cont
        else:
            params["resource_version"] = resource_version

        deadline = max(self.timeout, LIST_SECONDS)

        def read() -> dict[str, Any]:
            response = lister(_preload_content=False, _request_timeout=deadline, **params)
            body: dict[str, Any] = json.loads(response.data)
            return body

        try:
            body = await self._call(f"list {c.what}", read, deadline)
        except NotFound:
            if c.optional:
                return Page([], "")
            raise
        meta = body.get("metadata") or {}
        return Page(
            list(body.get("items") or []),
            str(meta.get("resourceVersion") or ""),
            str(meta.get("continue") or ""),
        )

    async def open_watch(
        self, c: Collection, resource_version: str, *, stall_after: float = 90.0
    ) -> WatchStream:
        """A watch of `c` from `resource_version`, with bookmarks (see `ThreadStream`)."""
        lister = self._lister(c)
        seconds = random.randint(*WATCH_SECONDS)  # spreads reconnections; never a decision
        params = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": seconds,
            **self._selectors(c),
        }
        read_timeout = stall_after + READ_GRACE
        return ThreadStream(
            c.what,
            lambda: lister(
                _preload_content=False,
                _request_timeout=(self.timeout, read_timeout),
                **params,
            ),
        )
