"""What a Kubernetes API request says, as the emulator's HTTP face reads it: the record RBAC
judges (`RequestRecord`), the bearer token, the client, query parameters (`dryRun`,
`gracePeriodSeconds`, numbers) and the body (JSON, YAML or protobuf).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from nodefence.hwsim.kube import protobuf
from nodefence.hwsim.kube.errors import BadRequest

Obj = dict[str, Any]


@dataclass(frozen=True)
class RequestRecord:
    """One request as RBAC sees it; `resource` is empty for non-resource paths."""

    verb: str
    path: str
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    code: int = 0
    user_agent: str = ""
    user: str = ""  # the bearer token the request carried (hwsim's tokens name the account)


# Decides whether a request (its `user` filled in, `code` not yet) may be served; False: 403.
Authorizer = Callable[[RequestRecord], bool]


def bearer(request: web.Request) -> str:
    """The bearer token of a request ("" without one)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def client_of(request: web.Request) -> str:
    """Who sent `request`, for the traffic counters: its User-Agent."""
    return request.headers.get("User-Agent", "") or "unknown"


def quorum_read(request: web.Request) -> bool:
    """A list a real API server answers from etcd (no resourceVersion, no continue token),
    not from its watch cache."""
    q = request.query
    return not q.get("resourceVersion") and not q.get("continue")


def number_param(value: str | None, name: str) -> float:
    """A numeric query parameter (0 when absent); BadRequest when it is not a number."""
    try:
        return float(value or 0)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {value!r}") from None


def dry_run_asked(values: Any) -> bool:
    """`dryRun` as the server reads it: absent, or `All`; anything else is refused (400)."""
    given = [values] if isinstance(values, str) else list(values)
    for value in given:
        if value != "All":
            raise BadRequest(f'Invalid dryRun value {value!r}: supported values: "All"')
    return bool(given)


def grace_period(options: Obj, query: Any) -> int | None:
    """`gracePeriodSeconds` from the DeleteOptions body, else the query; None when absent."""
    value = options.get("gracePeriodSeconds")
    if value is None:
        value = query.get("gracePeriodSeconds")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"gracePeriodSeconds must be an integer, not {value!r}") from None


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if request.content_type == "application/vnd.kubernetes.protobuf":
        return protobuf.decode(raw)
    if not raw.strip():
        return {}
    try:
        if "yaml" in request.content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"the request body could not be decoded: {exc}") from None
