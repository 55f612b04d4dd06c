"""The object store: every object, one resourceVersion counter, the change history, watches.

Thread-safe (one re-entrant lock), so the HTTP server and in-process simulators in other threads
share it. Methods take a resource (a `ResourceType` or any name kubectl accepts: `nodes`, `vm`,
`leases.coordination.k8s.io`) and dict objects, return deep copies, and raise the same
`ApiError`s the HTTP layer reports. Stored dicts are never mutated in place, so the history can
keep references to them.

What only reads (get, list, watch) is `nodefence.hwsim.kube.store_reads.StoreReads`, its base.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from nodefence.hwsim.kube import cascade, objects, pods
from nodefence.hwsim.kube.changes import Change
from nodefence.hwsim.kube.errors import STALE, AlreadyExists, BadRequest, NotFound, conflict
from nodefence.hwsim.kube.objects import present
from nodefence.hwsim.kube.patch import MERGE, apply_patch
from nodefence.hwsim.kube.resources import ResourceType, crd_for, established, types_from_crd
from nodefence.hwsim.kube.store_reads import DEFAULT_NAMESPACES, Obj, Resource, StoreReads


class ObjectStore(StoreReads):
    """Kubernetes objects with API-server semantics (resourceVersion, conflicts, watches)."""

    def __init__(
        self,
        types: list[ResourceType] | None = None,
        *,
        history_limit: int = 10_000,
        clock: Callable[[], datetime] = objects.wall_clock,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
    ) -> None:
        super().__init__(types, history_limit=history_limit, clock=clock)
        for rt in self.registry.all():
            if not rt.built_in:
                self._store_crd(rt)
        for ns in namespaces:
            self.create("namespaces", {"metadata": {"name": ns}})

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
        bound to a node is deleted gracefully (`nodefence.hwsim.kube.pods`): it stays, Terminating,
        until deleted with grace 0.
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

    @contextmanager
    def transaction(self) -> Iterator[ObjectStore]:
        """Hold the store lock across several calls (check-then-write without races)."""
        with self.lock:
            yield self

    # ---- internals -----------------------------------------------------------------------

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
