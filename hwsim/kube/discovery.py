"""Discovery documents: what kubectl reads to map `vm` to a group, version and URL.

Legacy (unaggregated) discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`,
`/apis/<group>/<version>`, plus `/version`. kubectl falls back to these when the server does not
answer with aggregated discovery, which is what we want: one small JSON shape per path.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.resources import Registry, ResourceType

Obj = dict[str, Any]

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-hwsim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(address: str) -> Obj:
    """`/api`: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def api_group(name: str, versions: list[str]) -> Obj:
    """`/apis/<group>`: one group, its versions, the first preferred."""
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def api_group_list(registry: Registry) -> Obj:
    """`/apis`: every non-core group."""
    groups = []
    for name, versions in registry.groups().items():
        group = api_group(name, versions)
        del group["kind"], group["apiVersion"]
        groups.append(group)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group_of(registry: Registry, name: str) -> Obj:
    """`/apis/<group>`, or NotFound."""
    versions = registry.groups().get(name)
    if not versions:
        raise NotFound("the server could not find the requested resource")
    return api_group(name, versions)


def _entry(rt: ResourceType) -> Obj:
    entry: Obj = {
        "name": rt.plural,
        "singularName": rt.singular_name,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def _subresources(rt: ResourceType) -> list[Obj]:
    out = []
    if rt.status_subresource:
        out.append(
            {
                "name": f"{rt.plural}/status",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    if "eviction" in rt.subresources:
        out.append(
            {
                "name": f"{rt.plural}/eviction",
                "singularName": "",
                "namespaced": rt.namespaced,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }
        )
    return out


def resource_list(registry: Registry, group: str, version: str) -> Obj:
    """`/api/v1` or `/apis/<group>/<version>`: the resources served there, or NotFound."""
    types = [rt for rt in registry.all() if rt.group == group and rt.version == version]
    if not types:
        raise NotFound("the server could not find the requested resource")
    resources = []
    for rt in types:
        resources.append(_entry(rt))
        resources.extend(_subresources(rt))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
