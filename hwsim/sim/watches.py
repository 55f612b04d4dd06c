"""Watches of the simulated API server: the change history and each open watch's stream.

Every write the server applies is recorded with its resourceVersion (`WatchHub.record`) and
fanned out to the open watches it concerns, each event arriving after a latency of its own,
in order, and a BOOKMARK every `BOOKMARKS` seconds (the current resourceVersion, so a narrow
watch that resumes is not sent to list again). A watch from a version older than the retained
history gets 410 Gone, as from a real server (an ERROR event, then the end). The faults a real
watch shows, for the informers of the real code (`nodefence.agent.kube.informer_loop`) to survive:
- the server or the network ends a stream (`break_watches`): the informer watches again from
  the last version it saw, or lists again after a 410;
- a gap (`gap`): a process's streams deliver nothing for a while (a congested API server, a
  stalled connection), then either everything held back arrives late or the streams break;
- compaction (`compact`): the history is forgotten, so a watch that must resume lists again;
- a process cut off from the API: its streams break at the next event, and it cannot open new
  ones (its requests time out, `nodefence.hwsim.sim.api`).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodefence.agent.kube.client import ClusterError
from nodefence.agent.kube.watch_client import Collection
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import ProcState, SimProcess, VirtualLoop

Obj = dict[str, Any]
HISTORY = 400  # changes retained, like etcd between compactions
BOOKMARKS = 10.0  # seconds between the bookmarks each watch gets (a real server: about 60)


_CONTAINERS = (dict, list)


def copy_json(obj: Any) -> Any:
    """A deep copy of a JSON-like value (what a real client gets: its own objects): dicts and
    lists are copied (as dicts and lists), anything else is shared."""
    # Only containers recurse: a call per leaf value was most of the cost.
    if isinstance(obj, dict):
        return {k: copy_json(v) if isinstance(v, _CONTAINERS) else v for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_json(v) if isinstance(v, _CONTAINERS) else v for v in obj]
    return obj


def resource_of(c: Collection) -> str:
    """The kind of object a collection lists: group/plural."""
    return f"{c.group}/{c.plural}"


def _pairs(selector: str) -> list[tuple[str, str]]:
    out = []
    for part in selector.split(","):
        if "=" in part:
            key, _, value = part.partition("=")
            out.append((key.strip(), value.strip()))
    return out


class Selector:
    """Which objects belong to a collection: its namespace, its label and field selectors
    (equality only, what nodefence asks for), parsed once (a watch is asked about every write
    of its resource)."""

    __slots__ = ("fields", "labels", "namespace")

    def __init__(self, c: Collection) -> None:
        self.namespace = c.namespace
        self.labels = _pairs(c.label_selector)
        self.fields = _pairs(c.field_selector)

    def matches(self, obj: Obj) -> bool:
        """Whether `obj` belongs to the collection."""
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels:
            labels = meta.get("labels") or {}
            if any(labels.get(k) != v for k, v in self.labels):
                return False
        for key, value in self.fields:
            if key == "metadata.name" and meta.get("name") != value:
                return False
            if key == "metadata.namespace" and meta.get("namespace") != value:
                return False
        return True


@dataclass
class SimChange:
    """One applied write. `obj` is the server's object as written, never changed afterwards
    (every write stores a new one)."""

    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    _delivered: Obj | None = None

    def delivered(self) -> Obj:
        """The object the watches get: one copy of `obj` (made at the first delivery unless
        the server gave one), shared by every watch that gets this change (the informers only
        read what they receive, `nodefence.agent.kube.informer_loop.Cache`; the server's own object
        stays out of their reach)."""
        if self._delivered is None:
            self._delivered = copy_json(self.obj)
        return self._delivered


class ClientCopies:
    """The copy the clients get of each stored object: made once per version of the object
    and shared by every answer, list and watch event that carries that version (the real code
    only reads what the API gives it), so the server's own objects stay out of its reach."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[Obj, Obj]] = {}  # key -> (stored object, its copy)

    def of(self, key: str, obj: Obj) -> Obj:
        """The clients' copy of `obj`, the object stored under `key` now."""
        held = self._by_key.get(key)
        if held is None or held[0] is not obj:
            held = (obj, copy_json(obj))
            self._by_key[key] = held
        return held[1]


class SimWatch:
    """One open watch (`nodefence.agent.kube.watch_client.WatchStream`), fed by the hub."""

    def __init__(
        self, hub: WatchHub, c: Collection, proc: SimProcess | None, reachable: Callable[[], bool]
    ) -> None:
        self.hub = hub
        self.collection = c
        self.resource = resource_of(c)
        self.selector = Selector(c)
        self.proc = proc
        self.reachable = reachable
        self._events: deque[Obj] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.due = 0.0  # arrival time of the last event sent: streams keep their order
        self.ended = False
        self.error: ClusterError | None = None
        self.held: list[Obj] = []  # events held back by a gap
        self.gap_until = 0.0

    def send(self, event: Obj, latency: float) -> None:
        """Queue `event` to arrive after `latency` (and after every event sent before it)."""
        loop = self.hub.loop
        self.due = max(self.due, loop.time() + latency)
        loop.call_at(self.due, self._arrive, event, context=loop.harness)

    def _arrive(self, event: Obj) -> None:
        if self.ended:
            return
        if self.proc is not None and self.proc.state is ProcState.KILLED:
            self.close()  # its connection closed with the process
            return
        if not self.reachable():
            self.end(ClusterError(f"watch {self.collection.what}: connection lost"))
            return
        if self.hub.loop.time() < self.gap_until:
            self.held.append(event)
            return
        self._events.append(event)
        self._wake()

    def release(self) -> None:
        """A gap ends with the events it held arriving (late)."""
        held, self.held = self.held, []
        for event in held:
            self._arrive(event)

    def end(self, error: ClusterError | None = None) -> None:
        """The stream ends (with `error`: broken)."""
        if self.ended:
            return
        self.ended = True
        self.error = error
        self._wake()
        self.hub.closed(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> list[Obj] | None:
        """See `nodefence.agent.kube.watch_client.WatchStream.next`."""
        if not self._events and not self.ended:
            loop = self.hub.loop
            waiter = self._waiter = loop.create_future()
            handle = loop.call_later(timeout, _settle_none, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
        if self._events:
            batch = list(self._events)
            self._events.clear()
            return batch
        if self.ended:
            if self.error is not None:
                raise self.error
            return None
        return []

    def close(self) -> None:
        """See `nodefence.agent.kube.watch_client.WatchStream.close`."""
        if not self.ended:
            self.ended = True
            self.hub.closed(self)


def _settle_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WatchHub:
    """The history of writes and the open watches (see the module doc)."""

    def __init__(self, loop: VirtualLoop, rng: random.Random, trace: Trace) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.history: deque[SimChange] = deque()
        self.compacted = 0  # every change after this resourceVersion is retained
        self.watches: list[SimWatch] = []
        self.slow: dict[SimProcess | None, tuple[float, float]] = {}  # proc -> (until, extra)
        self.gaps: dict[SimProcess | None, float] = {}  # proc -> its streams silent until
        self.rv = 0  # the newest resourceVersion recorded
        self._bookmarking = False

    def _latency(self, proc: SimProcess | None) -> float:
        latency = 0.002 + self.rng.random() * 0.02
        until, extra = self.slow.get(proc, (0.0, 0.0))
        if extra and self.loop.time() < until:
            latency += self.rng.random() * extra
        return latency

    def record(
        self, resource: str, kind: str, obj: Obj, rv: int, delivered: Obj | None = None
    ) -> None:
        """A write was applied: keep it, and send it to every watch it concerns. `obj` is
        kept as it is: the caller never changes it afterwards; `delivered`, if given, is the
        copy of it the watches get (`ClientCopies`)."""
        change = SimChange(rv, resource, kind, obj, delivered)
        self.rv = max(self.rv, rv)
        self.history.append(change)
        while len(self.history) > HISTORY:
            self.compacted = self.history.popleft().rv
        for w in list(self.watches):
            if w.resource == resource and w.selector.matches(obj):
                w.send({"type": kind, "object": change.delivered()}, self._latency(w.proc))

    def open(
        self,
        c: Collection,
        resource_version: str,
        proc: SimProcess | None,
        reachable: Callable[[], bool],
    ) -> SimWatch:
        """A watch from `resource_version`: the retained changes after it, then live ones."""
        w = SimWatch(self, c, proc, reachable)
        w.gap_until = self.gaps.get(proc, 0.0)
        since = int(resource_version) if resource_version.isdigit() else 0
        if since < self.compacted:
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            w.send({"type": "ERROR", "object": gone}, self._latency(proc))
            self.loop.call_at(w.due, w.end, context=self.loop.harness)  # right after it
            self.trace.faults["watch-410"] += 1
            return w
        self.watches.append(w)
        if not self._bookmarking:
            self._bookmarking = True
            self.loop.call_later(BOOKMARKS, self._bookmark, context=self.loop.harness)
        resource, selector = w.resource, w.selector
        for change in self.history:
            if change.rv > since and change.resource == resource and selector.matches(change.obj):
                w.send({"type": change.type, "object": change.delivered()}, self._latency(proc))
        return w

    def _bookmark(self) -> None:
        version = str(self.rv)
        for w in list(self.watches):
            mark = {"kind": w.collection.plural, "metadata": {"resourceVersion": version}}
            w.send({"type": "BOOKMARK", "object": mark}, self._latency(w.proc))
        self.loop.call_later(BOOKMARKS, self._bookmark, context=self.loop.harness)

    def closed(self, w: SimWatch) -> None:
        """A watch ended: no more events for it."""
        if w in self.watches:
            self.watches.remove(w)

    # -- faults ----------------------------------------------------------------------------------

    def break_watches(self, proc: SimProcess | None, share: float) -> int:
        """End that share of `proc`'s streams (connection reset, server restart); how many."""
        broken = 0
        for w in list(self.watches):
            if w.proc is proc and self.rng.random() < share:
                w.end(ClusterError(f"watch {w.collection.what}: connection reset"))
                broken += 1
        return broken

    def gap(self, proc: SimProcess | None, seconds: float, then_break: bool) -> None:
        """`proc`'s streams deliver nothing for `seconds`; then what they held arrives, or
        (`then_break`) they break."""
        until = self.loop.time() + seconds
        self.gaps[proc] = max(self.gaps.get(proc, 0.0), until)
        for w in list(self.watches):
            if w.proc is proc:
                w.gap_until = max(w.gap_until, until)

        def end_gap() -> None:
            for w in list(self.watches):
                if w.proc is not proc or w.gap_until > self.loop.time():
                    continue
                if then_break:
                    w.end(ClusterError(f"watch {w.collection.what}: connection reset"))
                else:
                    w.release()

        self.loop.call_at(until, end_gap, context=self.loop.harness)

    def slow_down(self, proc: SimProcess | None, until: float, extra: float) -> None:
        """Events to `proc` take up to `extra` seconds longer until `until`."""
        self.slow[proc] = (until, extra)

    def compact(self) -> None:
        """Forget the history (etcd compaction): resuming watches get 410."""
        if self.history:
            self.compacted = self.history[-1].rv
            self.history.clear()

    def heal(self) -> None:
        """The quiet phase: no gap or slowness any more; held events arrive."""
        self.slow.clear()
        self.gaps.clear()
        now = self.loop.time()
        for w in list(self.watches):
            if w.gap_until > now:
                w.gap_until = now
                w.release()
