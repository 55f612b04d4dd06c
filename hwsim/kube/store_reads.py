"""The object store's fields and everything that only reads them: get, list, watch (`StoreReads`,
the base of `nodefence.hwsim.kube.store.ObjectStore`, which writes).

Reads see the objects under the store lock; a watch replays the retained change history from a
resourceVersion (or starts with every matching object), then follows every change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nodefence.hwsim.kube import cascade, objects, pods
from nodefence.hwsim.kube.builtin import builtin_types
from nodefence.hwsim.kube.changes import ChangeLog, Subscription, bookmark
from nodefence.hwsim.kube.errors import not_found
from nodefence.hwsim.kube.objects import present, served_copy
from nodefence.hwsim.kube.resources import Registry, ResourceType
from nodefence.hwsim.kube.selectors import (
    Selector,
    decode_continue,
    page,
    parse_field_selector,
    parse_label_selector,
)
from nodefence.hwsim.kube.watch import Watcher, WatchEvent

Obj = dict[str, Any]
Resource = ResourceType | str
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_Key = tuple[str, str]
_Dependents = list[tuple[ResourceType, Obj]]
# A validating admission webhook: (operation, resource type, object, subresource); it raises an
# ApiError to refuse. `CREATE` of objects, and `CREATE` of `eviction` with the pod evicted.
Admission = Callable[[str, ResourceType, Obj, str], None]


class StoreReads:
    """The objects, the resourceVersion counter, the change history and the watches."""

    def __init__(
        self,
        types: list[ResourceType] | None = None,
        *,
        history_limit: int = 10_000,
        clock: Callable[[], datetime] = objects.wall_clock,
    ) -> None:
        self.registry = Registry(builtin_types() if types is None else types)
        self.clock = clock
        self.lock = threading.RLock()
        self._objects: dict[_Key, dict[_Key, Obj]] = {}
        self._rv = 0
        self._dry = False  # inside a dry-run request: compute everything, store nothing
        # DefaultTolerationSeconds admission: how long new pods tolerate not-ready/unreachable
        self.default_toleration_seconds: float = pods.DEFAULT_TOLERATION_SECONDS
        self._log = ChangeLog(history_limit)
        self._owners = cascade.OwnerIndex()
        self.admission: list[Admission] = []  # webhooks, in order (the emulated controllers')

    # ---- reading -------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The latest resourceVersion written."""
        with self.lock:
            return str(self._rv)

    def resolve(self, resource: Resource) -> ResourceType:
        """The resource type for a name kubectl would accept."""
        return self.registry.resolve(resource)

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        """The object, or NotFound."""
        rt = self.resolve(resource)
        with self.lock:
            return present(rt, self._find(rt, name, objects.namespace_for(rt, namespace)))

    def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        served: bool = False,
    ) -> Obj:
        """A `<Kind>List` of matching objects in key order, paged by `limit`/`continue`.
        `served`: the items only to be encoded and sent (the HTTP layer), so shallow copies:
        stored objects are never changed in place, and a deep copy of thousands of Nodes per
        list is what made a large list take seconds here, not in a real API server."""
        rt = self.resolve(resource)
        namespace = namespace if rt.namespaced else None
        selector = self._selector(rt, label_selector, field_selector)
        start = decode_continue(continue_token) if continue_token else None
        with self.lock:
            items = [
                o
                for key, o in sorted(self._objects.get(rt.storage_key, {}).items())
                if (namespace is None or key[0] == namespace)
                and (start is None or key > start)
                and selector.matches(o)
            ]
            meta: Obj = {"resourceVersion": str(self._rv)}
        items = page(items, limit, meta)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": [served_copy(rt, o) if served else present(rt, o) for o in items],
        }

    # ---- watching ------------------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        allow_bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watcher:
        """Subscribe to changes, like `?watch=true`.

        Without a resourceVersion (or with "0") the watcher first gets ADDED for every matching
        object; with one, it gets every change after it, or Gone (410) if that is older than the
        retained history. A change that makes an object stop (start) matching the selectors
        arrives as DELETED (ADDED), as from the real server's watch cache.
        """
        rt = self.resolve(resource)
        namespace = namespace if rt.namespaced else None
        sub = Subscription(
            rt, namespace, self._selector(rt, label_selector, field_selector), allow_bookmarks
        )
        watcher = Watcher(on_close=self._unsubscribe)
        with self.lock:
            initial = send_initial_events or (
                send_initial_events is None and resource_version in (None, "", "0")
            )
            if initial:
                for key, obj in sorted(self._objects.get(rt.storage_key, {}).items()):
                    if (namespace is None or key[0] == namespace) and sub.selector.matches(obj):
                        watcher.push(WatchEvent("ADDED", present(rt, obj)))
                if send_initial_events and allow_bookmarks:
                    watcher.push(bookmark(rt, self._rv, initial_events_end=True))
            elif resource_version not in (None, "", "0"):
                self._log.replay(watcher, sub, objects.parse_rv(resource_version))
            self._log.subscribe(watcher, sub)
        return watcher

    def bookmark(self, watcher: Watcher) -> None:
        """Queue a BOOKMARK at the current resourceVersion, if that watcher asked for them."""
        with self.lock:
            sub = self._log.subscription(watcher)
            if sub is not None and sub.allow_bookmarks:
                watcher.push(bookmark(sub.rt, self._rv))

    def compact(self) -> None:
        """Forget the change history, like etcd compaction: older watches get 410 Gone."""
        with self.lock:
            self._log.compact(self._rv)

    def _unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self._log.unsubscribe(watcher)

    # ---- internals -----------------------------------------------------------------------

    def _api_versions(self, rt: ResourceType) -> set[str]:
        return {t.api_version for t in self.registry.all() if t.storage_key == rt.storage_key}

    def _selector(self, rt: ResourceType, labels: str, fields: str) -> Selector:
        return Selector(
            parse_label_selector(labels), parse_field_selector(fields, rt.allowed_fields())
        )

    def _find(self, rt: ResourceType, name: str, ns: str | None) -> Obj:
        obj = self._objects.get(rt.storage_key, {}).get((ns or "", name))
        if obj is None:
            raise not_found(rt.group, rt.plural, name)
        return obj

    def has_uid(self, uid: str) -> bool:
        """Whether an object with this uid exists."""
        with self.lock:
            return self._owners.has(uid)

    def dependents_of(self, owner_uid: str) -> _Dependents:
        """(type, object) of everything whose ownerReferences name `owner_uid`."""
        with self.lock:
            out = []
            for api_version, kind, ns, name in self._owners.dependents(owner_uid):
                rt = self.registry.for_kind(api_version, kind)
                if rt is not None:
                    out.append((rt, present(rt, self._find(rt, name, ns or None))))
            return out
