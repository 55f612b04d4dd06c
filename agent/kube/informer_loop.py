"""Informer-style caches: list once, then watch from the list's resourceVersion.

What Kubernetes' own controllers do (client-go's reflector), so a leader of thousands of nodes
costs the API server a watch per kind instead of a full list every second:
- list the collection (`resourceVersion=0`: from the API server's watch cache, not a quorum
  read of etcd), page by page, into a `Cache`;
- watch from the list's resourceVersion, with bookmarks (which only move that version on);
- when the watch ends (server timeout, connection lost, silence past `stall_after`), watch
  again from the last version seen (at once if it delivered anything, else after a pause:
  a server that keeps ending watches is not hammered); when the server has compacted that
  version away (410 Gone), list again; errors back off, from `retry_min` doubling to
  `retry_max`.
`Cache` is pure: it folds lists and events into the objects it holds and says what changed.
Per object it never goes back in time: an event or a list older than the copy it holds (by
that object's resourceVersion, a number on every real API server) is ignored, so a copy
written through by the caller (`Informer.offer`: its own write, or a fresh read) stays.
Every change reaches `on_change` with two moments on the caller's clock: `since`, the last
time the cache was known current before it (None for the first list: no change was seen),
and `now`, when it arrived. The change happened in between (a watch delivers it at once, a
list after a gap found it later).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from nodefence.agent.kube.errors import ClusterError, Gone
from nodefence.agent.kube.watch_client import Collection, Page, WatchStream

log = logging.getLogger("nodefence.informer")

T = TypeVar("T")
Obj = Mapping[str, Any]


class Source(Protocol):
    """What an informer needs of an API client (`nodefence.agent.kube.client.ClusterApi`, or the
    simulation's `nodefence.hwsim.sim.api.SimClusterApi`)."""

    async def list_page(
        self, c: Collection, *, resource_version: str = "0", limit: int = 500, cont: str = ""
    ) -> Page:
        """One page of `c` (see `nodefence.agent.kube.watch_client.WatchCalls.list_page`)."""
        ...

    async def open_watch(
        self, c: Collection, resource_version: str, *, stall_after: float = 90.0
    ) -> WatchStream:
        """A watch of `c` from `resource_version`, with bookmarks."""
        ...


def object_name(obj: Obj) -> str:
    """The key of a cluster-scoped object, or of one in a single namespace: its name."""
    return str((obj.get("metadata") or {}).get("name") or "")


def namespaced_name(obj: Obj) -> str:
    """The key of an object in any namespace: `namespace/name`."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def older(version: str, than: str) -> bool:
    """Whether `version` of an object is older than, or the same as, `than` (of the same
    object). Unknown (not numbers): False, the newer copy is taken as it comes."""
    if not version.isdigit() or not than.isdigit():
        return False
    return int(version) <= int(than)


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A collection to cache and how its objects become values of type T."""

    collection: Collection
    convert: Callable[[Obj], T]
    key: Callable[[Obj], str] = object_name


@dataclass(frozen=True, init=False)
class Change(Generic[T]):
    """One object's change: `old` None when it is new, `new` None when it was deleted."""

    key: str
    old: T | None
    new: T | None

    def __init__(self, key: str, old: T | None, new: T | None) -> None:
        # One per event: filling the dict directly costs a third of the generated frozen
        # `__init__` (one `object.__setattr__` per field).
        d = self.__dict__
        d["key"] = key
        d["old"] = old
        d["new"] = new


class Cache(Generic[T]):
    """The objects of one collection, by key, and the resourceVersion they are current to."""

    def __init__(self, kind: Kind[T]) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self.versions: dict[str, str] = {}
        self.resource_version = ""

    def _take(self, key: str, version: str, obj: Obj) -> Change[T] | None:
        held = self.versions.get(key)
        if held is not None and (version == held or older(version, held)):
            return None  # already held, or older than what is held
        old = self.items.get(key)
        new = self.kind.convert(obj)
        self.items[key] = new
        self.versions[key] = version
        return Change(key, old, new)

    def _drop(self, key: str, version: str) -> Change[T] | None:
        held = self.versions.get(key)
        if held is None or (version and held != version and older(version, held)):
            return None  # not held, or the deletion of an older copy than the one held
        self.versions.pop(key)
        return Change(key, self.items.pop(key, None), None)

    def prepare(self, obj: Obj) -> tuple[str, str, T]:
        """`obj` as the cache holds it: (key, resourceVersion, value)."""
        return self.kind.key(obj), _version(obj), self.kind.convert(obj)

    def replace(self, objects: list[Obj], resource_version: str) -> list[Change[T]]:
        """A full list: take every object, drop those it no longer has."""
        return self.replace_prepared([self.prepare(o) for o in objects], resource_version)

    def replace_prepared(
        self, entries: list[tuple[str, str, T]], resource_version: str
    ) -> list[Change[T]]:
        """`replace` of objects already `prepare`d (a list converted page by page, so the raw
        JSON of thousands of Nodes is never held at once)."""
        seen: set[str] = set()
        changes: list[Change[T]] = []
        for key, version, value in entries:
            seen.add(key)
            held = self.versions.get(key)
            if held is not None and (version == held or older(version, held)):
                continue  # already held, or older than what is held
            old = self.items.get(key)
            self.items[key] = value
            self.versions[key] = version
            changes.append(Change(key, old, value))
        for key in [k for k in self.versions if k not in seen]:
            dropped = self._drop(key, "")
            if dropped is not None:
                changes.append(dropped)
        self.resource_version = resource_version
        return changes

    def apply(self, event_type: str, obj: Obj) -> Change[T] | None:
        """One watch event (ADDED, MODIFIED, DELETED; BOOKMARK only moves the version on)."""
        version = _version(obj)
        if version:
            self.resource_version = version
        if event_type == "BOOKMARK":
            return None
        key = self.kind.key(obj)
        if event_type == "DELETED":
            return self._drop(key, version)
        return self._take(key, version, obj)

    def offer(self, obj: Obj) -> Change[T] | None:
        """A copy of one object from elsewhere (a write's answer, a fresh read): taken if it
        is newer than the one held. The cache's own version does not move."""
        return self._take(self.kind.key(obj), _version(obj), obj)


class Compacted(Exception):
    """The watch stream said (an ERROR event, code 410) that its resourceVersion was
    compacted away: list again at once (an HTTP 410 answer is a `Gone` error, backed off)."""


OnChange = Callable[[list[Change[T]], float | None, float], None]
REPORT_SLICE = 500  # changes of a list reported at once


@dataclass
class InformerStats:
    """What one informer did, for tests and the bench."""

    lists: int = 0  # full lists (pages counted once)
    watches: int = 0  # watch requests
    gone: int = 0  # 410s: the watch's version was compacted away, a list followed
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    stalls: int = 0  # watches closed for silence
    by_type: dict[str, int] = field(default_factory=dict)


class Informer(Generic[T]):
    """Keeps a `Cache` of `kind` current over `source` (see the module doc); run `run()`."""

    def __init__(
        self,
        source: Source,
        kind: Kind[T],
        *,
        clock: Callable[[], float],
        on_change: OnChange[T] | None = None,
        page_size: int = 500,
        stall_after: float = 90.0,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.source = source
        self.kind = kind
        self.cache: Cache[T] = Cache(kind)
        self.clock = clock
        self.on_change = on_change
        self.page_size = page_size
        self.stall_after = stall_after
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.synced = asyncio.Event()  # the first list is in
        self.last_delivery: float | None = None  # when the cache was last known current
        self.watching = False  # a watch is open now
        self.stats = InformerStats()
        self._listed = False  # the cache holds a list; False: list (again) before watching

    @property
    def what(self) -> str:
        """The collection, in words."""
        return self.kind.collection.what

    def items(self) -> dict[str, T]:
        """The cached objects by key (the caller must not change it)."""
        return self.cache.items

    def offer(self, obj: Obj) -> None:
        """Take a copy of one object from elsewhere (see `Cache.offer`); a change is reported
        as one the watch would have delivered now."""
        change = self.cache.offer(obj)
        if change is not None:
            self._report([change])

    def _report(self, changes: list[Change[T]], *, first: bool = False) -> None:
        now = self.clock()
        since = None if first else self.last_delivery
        self.last_delivery = now
        if changes and self.on_change is not None:
            self.on_change(changes, since, now)

    async def run(self) -> None:
        """List, watch, list again when needed; until cancelled."""
        delay = self.retry_min
        while True:
            try:
                if not self._listed:
                    await self._list()
                if await self._watch():
                    delay = self.retry_min
                    continue
                await asyncio.sleep(delay)
                delay = min(self.retry_max, delay * 2)
            except Compacted:
                self.stats.gone += 1
                self._listed = False
                log.info("%s: watch version compacted away (410), listing again", self.what)
            except ClusterError as err:
                self.stats.errors += 1
                if isinstance(err, Gone):
                    self.stats.gone += 1
                    self._listed = False
                log.warning("%s: %s; again in %.1f s", self.what, err, delay)
                await asyncio.sleep(delay)
                delay = min(self.retry_max, delay * 2)

    async def _list(self) -> None:
        entries: list[tuple[str, str, T]] = []
        version, cont = "", ""
        while True:
            page = await self.source.list_page(
                self.kind.collection, resource_version="0", limit=self.page_size, cont=cont
            )
            # Converted as each page comes: a full list of raw Nodes is millions of objects,
            # and every garbage collection pass would walk them all, stalling the leader.
            entries.extend(self.cache.prepare(o) for o in page.items)
            version = version or page.resource_version  # every page is of the first's list
            cont = page.next
            if not cont:
                break
        self.stats.lists += 1
        first = not self.synced.is_set()
        changes = self.cache.replace_prepared(entries, version)
        self._listed = True
        # Reported in slices, the loop free in between: at 10,000 Nodes one report was a stall
        # of its own (heartbeats arriving meanwhile are stamped late).
        for at in range(0, max(len(changes), 1), REPORT_SLICE):
            self._report(changes[at : at + REPORT_SLICE], first=first)
            await asyncio.sleep(0)
        self.synced.set()

    async def _watch(self) -> bool:
        """One watch request, until it ends; whether it delivered anything."""
        c = self.kind.collection
        if c.optional and not self.cache.resource_version:
            # Not installed (the list was a 404): look again later, there is nothing to watch.
            await asyncio.sleep(self.retry_max)
            self._listed = False
            return True
        stream = await self.source.open_watch(
            c, self.cache.resource_version, stall_after=self.stall_after
        )
        self.stats.watches += 1
        self.watching = True
        delivered = False
        try:
            while True:
                batch = await stream.next(self.stall_after)
                if batch is None:
                    return delivered  # ended by the server: watch again from where it was
                if not batch:
                    self.stats.stalls += 1
                    log.info("%s: watch silent for %g s, reconnecting", self.what, self.stall_after)
                    return delivered
                delivered = True
                self._fold(batch)
        finally:
            self.watching = False
            stream.close()

    def _fold(self, batch: list[dict[str, Any]]) -> None:
        changes: list[Change[T]] = []
        for event in batch:
            kind = str(event.get("type") or "")
            obj = event.get("object")
            if type(obj) is not dict and not isinstance(obj, Mapping):
                continue  # (a dict tested first: the Mapping ABC's check costs far more)
            if kind == "ERROR":
                self._report(changes)
                code = obj.get("code")
                if code == 410:
                    raise Compacted()
                raise ClusterError(f"watch {self.what}: {obj.get('message') or obj}", code)
            self.stats.events += 1
            self.stats.by_type[kind] = self.stats.by_type.get(kind, 0) + 1
            if kind == "BOOKMARK":
                self.stats.bookmarks += 1
            change = self.cache.apply(kind, obj)
            if change is not None:
                changes.append(change)
        self._report(changes)
