"""The object store: every object, one resourceVersion counter, the change history, watches.

Thread-safe (one re-entrant lock), so the HTTP server and in-process simulators in other threads
share it. Methods take a resource (a `ResourceType` or any name kubectl accepts: `nodes`, `vm`,
`leases.coordination.k8s.io`) and dict objects, return deep copies, and raise the same
`ApiError`s the HTTP layer reports. Stored dicts are never mutated in place, so the history can
keep references to them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from hwsim.kube import cascade, objects, pods
from hwsim.kube.builtin import builtin_types
from hwsim.kube.changes import Change, ChangeLog, Subscription, bookmark
from hwsim.kube.errors import (
    STALE,
    AlreadyExists,
    BadRequest,
    NotFound,
    conflict,
    not_found,
)
from hwsim.kube.objects import present, served_copy
from hwsim.kube.patch import MERGE, apply_patch
from hwsim.kube.resources import Registry, ResourceType, crd_for, established, types_from_crd
from hwsim.kube.selectors import (
    Selector,
    decode_continue,
    page,
    parse_field_selector,
    parse_label_selector,
)
from hwsim.kube.watch import Watcher, WatchEvent

Obj = dict[str, Any]
Resource = ResourceType | str
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_Key = tuple[str, str]
_Dependents = list[tuple[ResourceType, Obj]]
# A validating admission webhook: (operation, resource type, object, subresource); it raises an
# ApiError to refuse. `CREATE` of objects, and `CREATE` of `eviction` with the pod evicted.
Admission = Callable[[str, ResourceType, Obj, str], None]


class ObjectStore:
    """Kubernetes objects with API-server semantics (resourceVersion, conflicts, watches)."""

    def __init__(
        self,
        types: list[ResourceType] | None = None,
        *,
        history_limit: int = 10_000,
        clock: Callable[[], datetime] = objects.wall_clock,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
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
        for rt in self.registry.all():
            if not rt.built_in:
                self._store_crd(rt)
        for ns in namespaces:
            self.create("namespaces", {"metadata": {"name": ns}})

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

    # ---- writing -------------------------------------------------------------------------

    def admit(self, operation: str, resource: Resource, obj: Obj, subresource: str = "") -> None:
        """Ask every admission webhook; the first refusal raises (its ApiError)."""
        rt = self.resolve(resource)
        for webhook in list(self.admission):
            webhook(operation, rt, obj, subresource)

    def create(
        self, resource: Resource, obj: Obj, namespace: str | None = None, *, dry_run: bool = False
    ) -> Obj:
        """Store a new object (201 over HTTP); AlreadyExists if the name is taken.

        `dry_run` (every writing method has it, as `?dryRun=All`): validate and return what
        would be stored, store nothing."""
        rt = self.resolve(resource)
        meta = obj.get("metadata") or {}
        ns = objects.namespace_for(rt, namespace or meta.get("namespace"))
        objects.check_body_namespace(rt, obj, ns)
        objects.check_type(rt, obj, self._api_versions(rt))
        with self._writing(dry_run):
            name = meta.get("name") or ""
            if not name and meta.get("generateName"):
                name = objects.generated_name(meta["generateName"])
                while (ns or "", name) in self._objects.get(rt.storage_key, {}):
                    name = objects.generated_name(meta["generateName"])
            if not name:
                raise objects.invalid(
                    rt, "", "metadata.name", "", "name or generateName is required"
                )
            objects.check_name(rt, name)
            if ns is not None:
                self._find(self.resolve("namespaces"), ns, None)
            if (ns or "", name) in self._objects.get(rt.storage_key, {}):
                raise AlreadyExists(
                    f'{rt.qualified} "{name}" already exists',
                    name=name,
                    group=rt.group,
                    kind=rt.plural,
                )
            new = objects.for_create(rt, obj, name, ns, self.clock())
            if pods.is_pod(rt):
                new = pods.admit(new, self.default_toleration_seconds)
            objects.check_labels(rt, new)
            self.admit("CREATE", rt, new)
            if self._serve_crd(rt, new):
                new["status"] = established(new)
            return present(rt, self._write(rt, "ADDED", new, None))

    def update(
        self,
        resource: Resource,
        obj: Obj,
        namespace: str | None = None,
        *,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """Replace an object (PUT); Conflict when its resourceVersion is stale.

        With `subresource="status"` only the status is taken; otherwise the status of a resource
        with a status subresource is kept as stored. Without a resourceVersion the update is
        Invalid (422) where the real server refuses unconditional updates (Leases, custom
        resources).
        """
        rt = self.resolve(resource)
        meta = obj.get("metadata") or {}
        ns = objects.namespace_for(rt, namespace or meta.get("namespace"))
        objects.check_body_namespace(rt, obj, ns)
        objects.check_type(rt, obj, self._api_versions(rt))
        name = meta.get("name") or ""
        if subresource not in ("", "status") or (subresource and not rt.status_subresource):
            raise NotFound("the server could not find the requested resource")
        with self._writing(dry_run):
            old = self._find(rt, name, ns)
            if not meta.get("resourceVersion") and not rt.unconditional_update:
                raise objects.resource_version_required(rt, name)
            if (
                meta.get("resourceVersion")
                and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
            ):
                raise conflict(rt.group, rt.plural, name, STALE)
            objects.check_preconditions(rt, old, {"uid": meta.get("uid")})
            new = objects.for_update(rt, old, obj, subresource)
            objects.check_labels(rt, new)
            if objects.unchanged(old, new):
                return present(rt, old)
            self._serve_crd(rt, new)
            if objects.finalized(new):
                return present(rt, self._remove(rt, new, "Background"))
            return present(rt, self._write(rt, "MODIFIED", new, old))

    def update_status(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        """`update(..., subresource="status")`."""
        return self.update(resource, obj, namespace, subresource="status")

    def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = MERGE,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """Patch an object: `patch_type` is a merge, strategic merge or JSON patch content type.

        A resourceVersion inside the patch is a precondition, as on the real server. Strategic
        merge patch is refused (415) on custom resources, as the real server does.
        """
        rt = self.resolve(resource)
        ns = objects.namespace_for(rt, namespace)
        with self._writing(dry_run):
            current = present(rt, self._find(rt, name, ns))
            keys = rt.merge_key_table() if rt.built_in else None
            patched = apply_patch(current, patch, patch_type, keys)
            pmeta = patched.setdefault("metadata", {})
            if pmeta.get("name") != name:
                raise BadRequest("the name of the object cannot be changed by a patch")
            if ns is not None and pmeta.get("namespace", ns) != ns:
                raise BadRequest("the namespace of the object cannot be changed by a patch")
            # A patch applies to the current object: never an unconditional update.
            pmeta["resourceVersion"] = pmeta.get("resourceVersion") or current["metadata"].get(
                "resourceVersion"
            )
            return self.update(rt, patched, ns, subresource=subresource)

    def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        preconditions: Obj | None = None,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Delete an object, or mark it deleting while finalizers remain; returns it.

        `preconditions` (`uid`, `resourceVersion`) must match or the delete is a Conflict.
        Dependents (by ownerReferences) are deleted too, unless the policy is `Orphan`. A pod
        bound to a node is deleted gracefully (`hwsim.kube.pods`): it stays, Terminating, until
        deleted with grace 0.
        """
        rt = self.resolve(resource)
        ns = objects.namespace_for(rt, namespace)
        with self._writing(dry_run):
            old = self._find(rt, name, ns)
            objects.check_preconditions(rt, old, preconditions or {})
            if pods.is_pod(rt):
                plan = pods.plan_delete(old, grace_period_seconds, self.clock())
                if not plan.remove:
                    if plan.marked is None:
                        return present(rt, old)
                    return present(rt, self._write(rt, "MODIFIED", plan.marked, old))
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return present(rt, old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = objects.timestamp(self.clock())
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return present(rt, self._write(rt, "MODIFIED", new, old))
            return present(rt, self._remove(rt, old, propagation_policy or "Background"))

    def delete_collection(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Delete every matching object; returns the list of what was deleted (or marked)."""
        rt = self.resolve(resource)
        with self._writing(dry_run):
            found = self.list(
                rt, namespace, label_selector=label_selector, field_selector=field_selector
            )
            found["items"] = [
                self.delete(
                    rt,
                    o["metadata"]["name"],
                    o["metadata"].get("namespace"),
                    grace_period_seconds=grace_period_seconds,
                )
                for o in found["items"]
            ]
        return found

    def register(self, rt: ResourceType) -> None:
        """Serve another resource type; a CRD-style type also gets its CRD object."""
        with self.lock:
            self.registry.add(rt)
            if not rt.built_in:
                self._store_crd(rt)

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

    @contextmanager
    def transaction(self) -> Iterator[ObjectStore]:
        """Hold the store lock across several calls (check-then-write without races)."""
        with self.lock:
            yield self

    @contextmanager
    def _writing(self, dry_run: bool) -> Iterator[None]:
        """Hold the lock for one write request; inside a dry run nothing is stored."""
        with self.lock:
            before = self._dry
            self._dry = before or dry_run
            try:
                yield
            finally:
                self._dry = before

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

    def _write(self, rt: ResourceType, kind: str, new: Obj, old: Obj | None) -> Obj:
        if self._dry:  # what would be stored; an update keeps the version it would replace
            if old is None:
                new["metadata"].pop("resourceVersion", None)
            else:
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return new
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        meta = new["metadata"]
        self._objects.setdefault(rt.storage_key, {})[(meta.get("namespace", ""), meta["name"])] = (
            new
        )
        self._owners.update(old, new)
        self._log.record(Change(self._rv, rt.storage_key, kind, new, old))
        return new

    def _remove(self, rt: ResourceType, obj: Obj, propagation: str) -> Obj:
        meta = obj["metadata"]
        if self._dry:
            return copy.deepcopy(obj)
        if rt.group == "" and rt.plural == "namespaces":
            cascade.empty_namespace(self, meta["name"])
        if rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions":
            cascade.drop_custom_resource(self, obj)
        self._rv += 1
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self._rv)
        del self._objects[rt.storage_key][(meta.get("namespace", ""), meta["name"])]
        self._owners.update(obj, None)
        self._log.record(Change(self._rv, rt.storage_key, "DELETED", final, None))
        cascade.collect_dependents(self, meta["uid"], propagation)
        return final

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

    def _unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self._log.unsubscribe(watcher)

    def _serve_crd(self, rt: ResourceType, obj: Obj) -> bool:
        """Serve what a CRD object declares (BadRequest if it cannot); False for other objects."""
        if (rt.group, rt.plural) != ("apiextensions.k8s.io", "customresourcedefinitions"):
            return False
        for t in types_from_crd(obj):
            if not self._dry:
                self.registry.add(t)
        return True

    def _store_crd(self, rt: ResourceType) -> None:
        crds = self.resolve("customresourcedefinitions.apiextensions.k8s.io")
        same = [t for t in self.registry.all() if t.storage_key == rt.storage_key]
        crd = objects.for_create(crds, crd_for(same), rt.qualified, None, self.clock())
        crd["status"] = established(crd)
        old = self._objects.get(crds.storage_key, {}).get(("", rt.qualified))
        if old is None:
            self._write(crds, "ADDED", crd, None)
        else:
            kept = {k: old["metadata"][k] for k in ("uid", "creationTimestamp", "generation")}
            crd["metadata"].update(kept)
            self._write(crds, "MODIFIED", crd, old)
