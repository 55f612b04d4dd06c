"""Request paths and headers read the way the real API server reads them.

Pure functions: a path to a `Route` (group, version, resource, namespace, name, subresource), a
method and query to a Kubernetes verb, and an Accept header to the representation asked for
(plain JSON, a `meta.k8s.io` Table, or PartialObjectMetadata).
"""

from __future__ import annotations

from dataclasses import dataclass

_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class Route:
    """A resource URL: `/api/v1/namespaces/ns/pods/name/status` and the like."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str = ""
    subresource: str = ""
    legacy_watch: bool = False


def parse_resource_path(path: str) -> Route | None:
    """The Route of a resource path, or None for discovery and other non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    legacy_watch = rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    if not rest:
        return None
    namespace: str | None = None
    namespaced_listing = (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES)
    )
    if namespaced_listing:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return Route(
        group=group,
        version=version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else "",
        subresource=rest[2] if len(rest) > 2 else "",
        legacy_watch=legacy_watch,
    )


def truthy(value: str | None) -> bool:
    """A boolean query parameter as the server parses it (`true`, `1`)."""
    return (value or "").lower() in ("true", "1")


def verb_for(method: str, route: Route, watch_param: str | None) -> str:
    """The Kubernetes verb (as RBAC names it) for an HTTP method on a route."""
    method = method.upper()
    if method == "GET":
        if route.name:
            return "watch" if route.legacy_watch else "get"
        return "watch" if route.legacy_watch or truthy(watch_param) else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()


@dataclass(frozen=True)
class Representation:
    """What the client asked for: `kind` is `json`, `Table` or `PartialObjectMetadata`."""

    kind: str = "json"
    api_version: str = "meta.k8s.io/v1"


def negotiate(accept: str | None) -> Representation:
    """The first representation in the Accept header that this server can produce."""
    for media in (accept or "").split(","):
        fields = [f.strip() for f in media.split(";")]
        params = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        if fields[0] not in ("application/json", "*/*", "application/*"):
            continue
        as_ = params.get("as")
        if as_ is None:
            return Representation()
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue
        api_version = f"meta.k8s.io/{params['v']}"
        if as_ == "Table":
            return Representation("Table", api_version)
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Representation("PartialObjectMetadata", api_version)
    return Representation()
