"""What the API server does to an object's metadata before it is stored.

Pure functions: name checks, `generateName`, the system fields of a new object, which parts of an
update a resource accepts (status subresource, immutable spec), and whether `generation` moves.
"""

from __future__ import annotations

import copy
import json
import random
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from nodefence.hwsim.kube.errors import BadRequest, Invalid, conflict
from nodefence.hwsim.kube.labels import label_problems
from nodefence.hwsim.kube.resources import ResourceType

Obj = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's: no vowels, no 0/1/3
SYSTEM_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp")


def timestamp(when: datetime) -> str:
    """RFC 3339 with second precision, as `metav1.Time` is written."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(when: datetime) -> str:
    """RFC 3339 with microseconds, as `metav1.MicroTime` (Lease renewTime) is written."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wall_clock() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)


def invalid(rt: ResourceType, name: str, field: str, value: Any, detail: str) -> Invalid:
    """A 422 Invalid naming the kind, object and field, as the real server words it."""
    return invalid_fields(rt, name, [(field, value, detail)])


def invalid_fields(rt: ResourceType, name: str, problems: list[tuple[str, Any, str]]) -> Invalid:
    """A 422 Invalid for every (field, bad value, detail), worded as apimachinery's
    `NewInvalid`: `Kind.group "name" is invalid: <error>` or `...: [<error>, <error>]`."""
    bodies = [(f, f"Invalid value: {_quoted(v)}: {d}") for f, v, d in problems]
    errors = [f"{f}: {body}" for f, body in bodies]
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return Invalid(
        f'{kind} "{name}" is invalid: {joined}',
        name=name,
        group=rt.group,
        kind=rt.kind,
        causes=[{"reason": "FieldValueInvalid", "message": b, "field": f} for f, b in bodies],
    )


def _quoted(value: Any) -> str:
    # Go's %q for strings, %v for the rest.
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def check_labels(rt: ResourceType, obj: Obj) -> None:
    """Invalid (422) for any label key or value the real server refuses; BadRequest for a
    label set that is not a map of strings (the real server cannot even decode it)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest(
            "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels"
            " of type string"
        )
    problems = label_problems(labels)
    if problems:
        name = meta.get("name", "")
        raise invalid_fields(rt, name, [("metadata.labels", v, d) for v, d in problems])


def check_name(rt: ResourceType, name: str) -> None:
    """Invalid unless `name` is a DNS subdomain (a DNS label for namespaces)."""
    if rt.kind == "Namespace" and rt.group == "":
        if len(name) > 63 or not _LABEL.match(name):
            raise invalid(
                rt,
                name,
                "metadata.name",
                name,
                "a lowercase RFC 1123 label must "
                "consist of lower case alphanumeric characters or '-'",
            )
    elif len(name) > 253 or not _SUBDOMAIN.match(name):
        raise invalid(
            rt,
            name,
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must "
            "consist of lower case alphanumeric characters, '-' or '.'",
        )


def namespace_for(rt: ResourceType, namespace: str | None) -> str | None:
    """The namespace an object of `rt` lives in: None if cluster-scoped, else required."""
    if not rt.namespaced:
        return None
    if not namespace:
        raise BadRequest(f"{rt.qualified} is namespaced: a namespace is required")
    return namespace


def check_body_namespace(rt: ResourceType, obj: Obj, namespace: str | None) -> None:
    """BadRequest when the body names another namespace than the request."""
    body_ns = (obj.get("metadata") or {}).get("namespace")
    if rt.namespaced and body_ns and body_ns != namespace:
        raise BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
        )


def generated_name(prefix: str) -> str:
    """`generateName` plus five random characters."""
    return prefix + "".join(random.choices(_SUFFIX_ALPHABET, k=5))


def check_type(rt: ResourceType, obj: Obj, versions: set[str]) -> None:
    """BadRequest when the body names another kind or an apiVersion this group does not serve."""
    kind = obj.get("kind")
    if kind and kind != rt.kind:
        raise BadRequest(
            f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
        )
    api_version = obj.get("apiVersion")
    if api_version and api_version not in versions:
        raise BadRequest(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rt.api_version})"
        )


def for_create(rt: ResourceType, obj: Obj, name: str, namespace: str | None, now: datetime) -> Obj:
    """The object as first stored: type fields, system metadata, status as the resource allows."""
    new = copy.deepcopy(obj)
    meta = new.setdefault("metadata", {})
    if meta.get("resourceVersion"):
        raise BadRequest("resourceVersion should not be set on objects to be created")
    for f in SYSTEM_FIELDS:
        meta.pop(f, None)
    meta.pop("deletionGracePeriodSeconds", None)
    meta["name"] = name
    if namespace is None:
        meta.pop("namespace", None)
    else:
        meta["namespace"] = namespace
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = timestamp(now)
    meta["generation"] = 1
    new = {"apiVersion": rt.api_version, "kind": rt.kind, **new}
    new["apiVersion"], new["kind"] = rt.api_version, rt.kind
    if rt.status_subresource and not rt.keep_status_on_create:
        new.pop("status", None)
    if rt.built_in and rt.kind == "Pod" and rt.group == "":
        new["status"] = {"phase": "Pending"}
    if rt.built_in and rt.kind == "Secret" and rt.group == "":
        new.setdefault("type", "Opaque")
    if rt.built_in and rt.kind == "Namespace" and rt.group == "":
        new.setdefault("status", {}).setdefault("phase", "Active")
    return new


def _body(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def for_update(rt: ResourceType, old: Obj, new: Obj, subresource: str) -> Obj:
    """The object an update stores: system fields kept, status or spec taken as allowed."""
    if subresource == "status":
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = copy.deepcopy(new["status"])
        else:
            result.pop("status", None)
        return result
    result = copy.deepcopy(new)
    meta = result.setdefault("metadata", {})
    for f in (*SYSTEM_FIELDS, "name", "namespace", "deletionGracePeriodSeconds"):
        if f in old["metadata"]:
            meta[f] = old["metadata"][f]
        else:
            meta.pop(f, None)
    result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
    if rt.status_subresource:
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
    if rt.immutable_spec and result.get("spec") != old.get("spec"):
        raise invalid(rt, meta["name"], "spec", "", "spec is immutable")
    if _body(result) != _body(old):
        meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
    return result


def unchanged(old: Obj, new: Obj) -> bool:
    """Whether an update would store the same object (the real server then writes nothing)."""
    a = {**old, "metadata": {k: v for k, v in old["metadata"].items() if k != "resourceVersion"}}
    b = {**new, "metadata": {k: v for k, v in new["metadata"].items() if k != "resourceVersion"}}
    return a == b


def present(rt: ResourceType, obj: Obj) -> Obj:
    """A copy of a stored object as served at `rt`'s version."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = rt.api_version
    return out


def served_copy(rt: ResourceType, obj: Obj) -> Obj:
    """A stored object as served at `rt`'s version, for encoding only: a shallow copy (the
    stored object's parts are shared and must not be changed)."""
    return {**obj, "apiVersion": rt.api_version}


def parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"invalid resource version {text!r}") from None


def finalized(obj: Obj) -> bool:
    """An update left an object marked for deletion with no finalizer and no grace period
    pending: the server deletes it now (a Terminating pod waits for its kubelet instead)."""
    meta = obj["metadata"]
    return bool(
        meta.get("deletionTimestamp")
        and not meta.get("finalizers")
        and not meta.get("deletionGracePeriodSeconds")
    )


def check_preconditions(rt: ResourceType, obj: Obj, preconditions: Obj) -> None:
    """Conflict unless the `uid`/`resourceVersion` preconditions given match `obj`."""
    for field in ("uid", "resourceVersion"):
        want, have = preconditions.get(field), obj["metadata"].get(field)
        if want and want != have:
            why = f"Precondition failed: {field} in precondition: {want}, {field} in object meta: "
            raise conflict(rt.group, rt.plural, obj["metadata"]["name"], why + str(have))


def resource_version_required(rt: ResourceType, name: str) -> Invalid:
    """The 422 of an update without resourceVersion where the server refuses unconditional
    updates, worded as the generic registry's (`plural.group "name" is invalid: ...`)."""
    detail = "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    return Invalid(
        f'{rt.qualified} "{name}" is invalid: {detail}',
        name=name,
        group=rt.group,
        kind=rt.plural,
        causes=[
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0x0: must be specified for an update",
                "field": "metadata.resourceVersion",
            }
        ],
    )
