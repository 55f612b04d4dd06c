"""What the emulator serves: one `ResourceType` per group/version/plural, and their registry.

A `ResourceType` says everything the store and the HTTP layer need: names for discovery and
kubectl (kind, plural, singular, short names, categories), scope, whether `status` is a
subresource, which fields a field selector may use, how strategic merge patch merges lists,
and the printed columns. The built-in table is in `builtin.py`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import BadRequest, NotFound
from nodefence.hwsim.kube.tables import AGE, NAME, Column, path_column

Obj = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource. `built_in=False` means served like a custom resource.

    - `merge_keys`: strategic merge patch keys by dotted path (`spec.containers` -> `name`);
      an empty key marks a list of scalars merged as a set (`metadata.finalizers`). Lists not
      named here are replaced whole, as for the real server's atomic lists (`spec.taints`).
    - `field_selectors`: fields beyond `metadata.name`/`metadata.namespace` usable in a
      fieldSelector.
    - `keep_status_on_create`: the create body's status is kept (Node); otherwise a resource
      with a status subresource starts with an empty status.
    - `immutable_spec`: any change to `spec` after create is refused (VirtualMachineOperation).
    - `subresources`: extra subresources besides `status` (`eviction` on pods).
    - `allow_unconditional_update`: a PUT without resourceVersion is applied (most built-in
      types); False where the real server refuses it with 422 (Leases). Custom resources
      always refuse it.
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    singular: str = ""
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    built_in: bool = False
    columns: tuple[Column, ...] = ()
    field_selectors: tuple[str, ...] = ()
    merge_keys: tuple[tuple[str, str], ...] = ()
    keep_status_on_create: bool = False
    immutable_spec: bool = False
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    allow_unconditional_update: bool = True

    @property
    def unconditional_update(self) -> bool:
        """Whether an update without resourceVersion is applied (the strategy's
        `AllowUnconditionalUpdate`)."""
        return self.built_in and self.allow_unconditional_update

    @property
    def api_version(self) -> str:
        """`v1` for the core group, `group/version` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        """The kind of a list response."""
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        """`singularName` in discovery: given or the lowercased kind."""
        return self.singular or self.kind.lower()

    @property
    def qualified(self) -> str:
        """`plural.group` as kubectl and error messages name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects of every version of one group/plural share storage."""
        return (self.group, self.plural)

    @property
    def printed_columns(self) -> tuple[Column, ...]:
        """The Table columns: given, or NAME and AGE."""
        return self.columns or (NAME, AGE)

    def merge_key_table(self) -> dict[str, str]:
        """`merge_keys` plus the list keys every object's metadata has."""
        keys = {"metadata.finalizers": "", "metadata.ownerReferences": "uid"}
        keys.update(dict(self.merge_keys))
        return keys

    def allowed_fields(self) -> tuple[str, ...]:
        """Every field a fieldSelector may use on this resource."""
        return ("metadata.name", "metadata.namespace", *self.field_selectors)


class Registry:
    """The served resource types, thread-safe; resolves any name kubectl would accept."""

    def __init__(self, types: list[ResourceType] | None = None) -> None:
        self._lock = threading.Lock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in types or []:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        """Serve `rt` (replacing an earlier type with the same group/version/plural)."""
        with self._lock:
            self._types[(rt.group, rt.version, rt.plural)] = rt

    def remove(self, group: str, plural: str) -> list[ResourceType]:
        """Stop serving every version of group/plural; returns what was removed."""
        with self._lock:
            gone = [rt for k, rt in self._types.items() if k[0] == group and k[2] == plural]
            for rt in gone:
                del self._types[(rt.group, rt.version, rt.plural)]
            return gone

    def all(self) -> list[ResourceType]:
        """Every served type in registration order."""
        with self._lock:
            return list(self._types.values())

    def get(self, group: str, version: str, plural: str) -> ResourceType:
        """The type served at /api(s)/group/version/plural, or NotFound."""
        with self._lock:
            rt = self._types.get((group, version, plural))
        if rt is None:
            raise NotFound("the server could not find the requested resource")
        return rt

    def for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        """The type with this apiVersion and kind, if served."""
        for rt in self.all():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def resolve(self, ref: ResourceType | str) -> ResourceType:
        """A type by any name kubectl takes: `nodes`, `Node`, `vm`, `leases.coordination.k8s.io`.

        The core group wins ties, as in kubectl (`events` is core/v1 events); among the other
        groups the one served first does (the built-in types before later CRDs: `vm` stays
        Deckhouse's VirtualMachine once KubeVirt's CRDs are installed too; qualify the name,
        `virtualmachines.kubevirt.io`, for the other).
        """
        if isinstance(ref, ResourceType):
            return ref
        name, _, group = ref.partition(".")
        candidates = [
            rt
            for rt in self.all()
            if (not group or rt.group == group)
            and (
                name in (rt.plural, rt.singular_name, rt.kind, rt.kind.lower())
                or name in rt.short_names
            )
        ]
        if not candidates:
            raise BadRequest(f'the server doesn\'t have a resource type "{ref}"')
        candidates.sort(key=lambda rt: rt.group != "")  # stable: in the order served
        return candidates[0]

    def groups(self) -> dict[str, list[str]]:
        """Non-core groups and their versions, in registration order."""
        out: dict[str, list[str]] = {}
        for rt in self.all():
            if rt.group and rt.version not in out.setdefault(rt.group, []):
                out[rt.group].append(rt.version)
        return out


def types_from_crd(crd: Obj) -> list[ResourceType]:
    """The served types an `apiextensions.k8s.io/v1` CustomResourceDefinition declares."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        raise BadRequest("a CustomResourceDefinition needs spec.group, names.plural and kind")
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        columns: list[Column] = []
        for col in version.get("additionalPrinterColumns") or []:
            columns.append(
                path_column(
                    col["name"], col["jsonPath"], col.get("type", "string"), col.get("priority", 0)
                )
            )
        selectable = tuple(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or [])
        out.append(
            ResourceType(
                group=group,
                version=version["name"],
                kind=kind,
                plural=plural,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                singular=names.get("singular", ""),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in (version.get("subresources") or {}),
                columns=(NAME, *columns, AGE) if columns else (NAME, AGE),
                field_selectors=selectable,
            )
        )
    return out


def crd_for(types: list[ResourceType]) -> Obj:
    """A CustomResourceDefinition object describing CRD-style `types` (one group/plural)."""
    first = types[0]
    versions = []
    for i, rt in enumerate(types):
        version: Obj = {"name": rt.version, "served": True, "storage": i == 0}
        if rt.status_subresource:
            version["subresources"] = {"status": {}}
        version["schema"] = {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        }
        versions.append(version)
    names: Obj = {
        "plural": first.plural,
        "singular": first.singular_name,
        "kind": first.kind,
        "listKind": first.list_kind,
    }
    if first.short_names:
        names["shortNames"] = list(first.short_names)
    if first.categories:
        names["categories"] = list(first.categories)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": first.qualified},
        "spec": {
            "group": first.group,
            "names": names,
            "scope": "Namespaced" if first.namespaced else "Cluster",
            "versions": versions,
        },
    }


def established(crd: Obj) -> Obj:
    """The status a CRD gets once its names are accepted and it is served."""
    return {
        "acceptedNames": (crd.get("spec") or {}).get("names", {}),
        "storedVersions": [
            v["name"] for v in (crd.get("spec") or {}).get("versions", []) if v.get("storage")
        ],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
        ],
    }
