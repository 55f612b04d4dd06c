"""A small evaluator of RBAC rules as rendered in `deploy/`: which grants bind to a
ServiceAccount, which recorded API calls they deny, which of them no call used. The API emulator
does not authorise; `serve_rbac` lets it store the RBAC objects kubectl applies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from nodefence.hwsim.kube import KubeApiServer, RequestRecord, ResourceType
from tests.support.deploy import Obj

# -- the RBAC objects on the API emulator -----------------------------------------------------

RBAC_KINDS = (
    ("Role", "roles", True),
    ("RoleBinding", "rolebindings", True),
    ("ClusterRole", "clusterroles", False),
    ("ClusterRoleBinding", "clusterrolebindings", False),
)


def serve_rbac(server: KubeApiServer) -> None:
    """The emulator does not serve rbac.authorization.k8s.io; serve it as plain storage."""
    for kind, plural, namespaced in RBAC_KINDS:
        server.register(
            ResourceType(
                group="rbac.authorization.k8s.io",
                version="v1",
                kind=kind,
                plural=plural,
                namespaced=namespaced,
                built_in=True,
            )
        )


# -- the evaluator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One RBAC rule as bound to the subject; `namespace` None means cluster-wide."""

    role: str
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]
    namespace: str | None

    def allows(self, req: RequestRecord) -> bool:
        """Whether this rule authorizes `req`, as the API server's RBAC authorizer decides."""
        resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
        if self.namespace is not None and req.namespace != self.namespace:
            return False  # a Role never grants cluster-scoped or other-namespace requests
        if self.names and (req.verb in ("create", "list", "watch", "deletecollection")):
            return False  # a name-restricted rule cannot know the name of these
        return (
            ("*" in self.api_groups or req.group in self.api_groups)
            and ("*" in self.resources or resource in self.resources)
            and ("*" in self.verbs or req.verb in self.verbs)
            and (not self.names or req.name in self.names)
        )


def grants_for(docs: Iterable[Obj], namespace: str, account: str) -> list[Grant]:
    """Every rule bound to ServiceAccount `namespace/account` by the rendered bindings."""
    docs = list(docs)
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    grants: list[Grant] = []
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
        if not any(s.items() >= subject.items() for s in binding.get("subjects") or []):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        key = (ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])
        assert key in roles, f"{binding['kind']} {binding['metadata']['name']}: no {key}"
        for rule in roles[key]:
            grants.append(
                Grant(
                    role=f"{ref['kind']}/{ref['name']}",
                    api_groups=frozenset(rule.get("apiGroups") or ()),
                    resources=frozenset(rule.get("resources") or ()),
                    verbs=frozenset(rule["verbs"]),
                    names=frozenset(rule.get("resourceNames") or ()),
                    namespace=scope,
                )
            )
    return grants


DISCOVERY = re.compile(r"^/(api|apis|version|openapi|healthz|livez|readyz)(/.*)?$")


def denied(grants: list[Grant], requests: Iterable[RequestRecord]) -> list[str]:
    """The requests no grant allows (discovery paths are open to every authenticated user)."""
    out = []
    for req in requests:
        if not req.resource:
            if not (req.verb == "get" and DISCOVERY.match(req.path)):
                out.append(f"{req.verb} {req.path}")
        elif not any(g.allows(req) for g in grants):
            out.append(f"{req.verb} {req.path}")
    return sorted(set(out))


def unused(grants: list[Grant], requests: list[RequestRecord]) -> list[str]:
    """Each (role, group, resource, verb) a grant gives that no request needed."""
    out = []
    for g in grants:
        for group in g.api_groups:
            for resource in g.resources:
                resource_name, _, sub = resource.partition("/")
                for verb in g.verbs:
                    wanted = [
                        r
                        for r in requests
                        if (r.group, r.resource, r.subresource, r.verb)
                        == (group, resource_name, sub, verb)
                    ]
                    if not any(g.allows(r) for r in wanted):
                        where = g.namespace or "cluster"
                        out.append(f"{g.role} ({where}): {verb} {group or 'core'}/{resource}")
    return sorted(out)


def rec(
    verb: str, resource: str, namespace: str = "", name: str = "", group: str = ""
) -> RequestRecord:
    """A request as the emulator records it; `resource` may name a subresource (pods/eviction)."""
    plural, _, sub = resource.partition("/")
    return RequestRecord(
        verb, f"/fake/{resource}", group, "", plural, namespace, name, sub, code=200
    )
