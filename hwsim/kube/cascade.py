"""What the real cluster's controllers do when something is deleted, done at once here.

The namespace controller empties a deleted namespace, the apiextensions controller stops serving
a deleted CRD's resource (and its objects go), and the garbage collector deletes dependents
whose owners are all gone (background propagation) or strips the owner reference (`Orphan`).
Each works through the store's public methods, under its (re-entrant) lock, so every step is an
ordinary change with its own resourceVersion and watch event; an object with finalizers is
only marked for deletion, as in a real cluster.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from nodefence.hwsim.kube.errors import NotFound

if TYPE_CHECKING:
    from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]


Where = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


class OwnerIndex:
    """Which objects exist by uid, and which uids each owner uid owns (not locked itself)."""

    def __init__(self) -> None:
        self._where: dict[str, Where] = {}
        self._owned: dict[str, set[str]] = {}

    def update(self, old: Obj | None, new: Obj | None) -> None:
        """Account for a write: `old` (if any) replaced by `new` (None for a deletion)."""
        for obj, add in ((old, False), (new, True)):
            if obj is None:
                continue
            meta = obj["metadata"]
            if add:
                where = (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
                self._where[meta["uid"]] = where
            else:
                self._where.pop(meta["uid"], None)
            for ref in meta.get("ownerReferences") or []:
                owned = self._owned.setdefault(str(ref.get("uid")), set())
                (owned.add if add else owned.discard)(meta["uid"])

    def has(self, uid: str) -> bool:
        """Whether an object with this uid exists."""
        return uid in self._where

    def dependents(self, owner_uid: str) -> list[Where]:
        """Where each object owned by `owner_uid` is, in uid order."""
        owned = sorted(self._owned.get(owner_uid, set()))
        return [self._where[uid] for uid in owned if uid in self._where]


def _delete_quietly(store: ObjectStore, resource: Any, obj: Obj) -> None:
    meta = obj["metadata"]
    with contextlib.suppress(NotFound):  # already taken by an earlier cascade step
        store.delete(resource, meta["name"], meta.get("namespace"))


def empty_namespace(store: ObjectStore, namespace: str) -> None:
    """Delete every object in `namespace`."""
    for rt in store.registry.all():
        if rt.namespaced:
            for obj in store.list(rt, namespace)["items"]:
                _delete_quietly(store, rt, obj)


def drop_custom_resource(store: ObjectStore, crd: Obj) -> None:
    """Delete every object of a CRD's resource, then stop serving it."""
    spec = crd.get("spec") or {}
    group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
    served = [rt for rt in store.registry.all() if rt.storage_key == (group, plural)]
    if served:
        for obj in store.list(served[0])["items"]:
            _delete_quietly(store, served[0], obj)
    store.registry.remove(group, plural)


def collect_dependents(store: ObjectStore, owner_uid: str, propagation: str) -> None:
    """Garbage-collect the objects that name `owner_uid` in their ownerReferences."""
    for rt, dependent in store.dependents_of(owner_uid):
        refs = dependent["metadata"].get("ownerReferences") or []
        others_alive = any(
            r.get("uid") != owner_uid and store.has_uid(str(r.get("uid"))) for r in refs
        )
        if propagation == "Orphan" or others_alive:
            dependent["metadata"]["ownerReferences"] = [
                r for r in refs if r.get("uid") != owner_uid
            ]
            store.update(rt, dependent)
        else:
            _delete_quietly(store, rt, dependent)
