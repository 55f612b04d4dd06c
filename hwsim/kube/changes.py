"""The store's change history and live watch subscriptions.

Not locked itself: the store calls it under its own lock, which is what gives every watcher the
same global order of events and lets a watch replay history and subscribe without a gap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import Gone
from nodefence.hwsim.kube.objects import present
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.selectors import Selector
from nodefence.hwsim.kube.watch import Watcher, WatchEvent

Obj = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One write: its resourceVersion, where, what (ADDED/MODIFIED/DELETED), before and after."""

    rv: int
    storage: tuple[str, str]
    type: str
    obj: Obj
    old: Obj | None


@dataclass(frozen=True)
class Subscription:
    """What a watcher asked for."""

    rt: ResourceType
    namespace: str | None
    selector: Selector
    allow_bookmarks: bool


class ChangeLog:
    """The last `limit` changes and the watchers they are fanned out to."""

    def __init__(self, limit: int) -> None:
        self._history: deque[Change] = deque()
        self._limit = limit
        self.compacted = 0  # every change after this resourceVersion is retained
        self._subs: dict[Watcher, Subscription] = {}

    def record(self, change: Change) -> None:
        """Keep a change and deliver it to every subscriber it concerns."""
        self._history.append(change)
        while len(self._history) > self._limit:
            self.compacted = self._history.popleft().rv
        for watcher, sub in list(self._subs.items()):
            deliver(watcher, sub, change)

    def replay(self, watcher: Watcher, sub: Subscription, since: int) -> None:
        """Deliver every retained change after `since`; Gone when some are no longer kept."""
        if since < self.compacted:
            raise Gone(f"too old resource version: {since} ({self.compacted + 1})")
        for change in self._history:
            if change.rv > since:
                deliver(watcher, sub, change)

    def subscribe(self, watcher: Watcher, sub: Subscription) -> None:
        """Deliver future changes to `watcher`."""
        self._subs[watcher] = sub

    def unsubscribe(self, watcher: Watcher) -> None:
        """Stop delivering to `watcher`."""
        self._subs.pop(watcher, None)

    def subscription(self, watcher: Watcher) -> Subscription | None:
        """What `watcher` subscribed to, if it still is subscribed."""
        return self._subs.get(watcher)

    def compact(self, up_to: int) -> None:
        """Forget every change up to `up_to`."""
        while self._history and self._history[0].rv <= up_to:
            self._history.popleft()
        self.compacted = max(self.compacted, up_to)


def deliver(watcher: Watcher, sub: Subscription, change: Change) -> None:
    """Push `change` as the event this subscriber sees, if any.

    An object that stops (starts) matching the selectors arrives as DELETED (ADDED).
    """
    if change.storage != sub.rt.storage_key:
        return
    if sub.namespace is not None and change.obj["metadata"].get("namespace") != sub.namespace:
        return
    now = sub.selector.matches(change.obj)
    before = change.old is not None and sub.selector.matches(change.old)
    if change.type == "MODIFIED":
        kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else ""
    else:
        kind = change.type if now else ""
    if kind:
        watcher.push(WatchEvent(kind, present(sub.rt, change.obj)))


def bookmark(rt: ResourceType, rv: int, *, initial_events_end: bool = False) -> WatchEvent:
    """A BOOKMARK event: an object of the watched kind with only a resourceVersion."""
    meta: Obj = {"resourceVersion": str(rv)}
    if initial_events_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return WatchEvent("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})
