"""A minimal OpenAPI v3 index, just enough for `kubectl apply` and friends.

kubectl reads `/openapi/v3` to learn whether the server validates fields itself (the
`fieldValidation` query parameter on PATCH); if it cannot, it insists on validating client-side
from OpenAPI v2, which we do not serve. So each group/version document lists, per resource, a
PATCH operation tagged with its group/version/kind that accepts `fieldValidation`. The operations
offer merge and JSON patch only: kubectl then computes strategic merge patches for built-in
kinds from its compiled-in types and JSON merge patches for custom ones, as against a real server.
No schemas are served (`kubectl explain` will not work).
"""

from __future__ import annotations

import hashlib
from typing import Any

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.patch import JSON_PATCH, MERGE
from nodefence.hwsim.kube.resources import Registry, ResourceType

Obj = dict[str, Any]

_QUERY = ("fieldValidation", "fieldManager", "dryRun", "pretty")


def _prefix(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _doc_hash(registry: Registry, group: str, version: str) -> str:
    kinds = sorted(rt.kind for rt in registry.all() if rt.group == group and rt.version == version)
    return hashlib.sha256(repr(kinds).encode()).hexdigest()[:16].upper()


def root(registry: Registry) -> Obj:
    """`/openapi/v3`: one entry per served group/version."""
    gvs = {(rt.group, rt.version) for rt in registry.all()}
    return {
        "paths": {
            _prefix(g, v): {
                "serverRelativeURL": f"/openapi/v3/{_prefix(g, v)}?hash={_doc_hash(registry, g, v)}"
            }
            for g, v in sorted(gvs)
        }
    }


def _patch_operation(rt: ResourceType) -> Obj:
    return {
        "operationId": f"patch{rt.kind}",
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {
            "group": rt.group,
            "version": rt.version,
            "kind": rt.kind,
        },
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in _QUERY
        ],
        "requestBody": {
            "content": {MERGE: {"schema": {"type": "object"}}, JSON_PATCH: {"schema": {}}}
        },
        "responses": {"200": {"description": "OK"}},
    }


def group_version(registry: Registry, path: str) -> Obj:
    """`/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`, or NotFound."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[:1] == ["apis"] and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        raise NotFound("the server could not find the requested resource")
    types = [rt for rt in registry.all() if rt.group == group and rt.version == version]
    if not types:
        raise NotFound("the server could not find the requested resource")
    paths: Obj = {}
    for rt in types:
        scope = "namespaces/{namespace}/" if rt.namespaced else ""
        paths[f"/{_prefix(group, version)}/{scope}{rt.plural}/{{name}}"] = {
            "patch": _patch_operation(rt)
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (hwsim)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }
