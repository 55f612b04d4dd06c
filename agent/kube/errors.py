"""The errors a Kubernetes API call of nodefence raises (re-exported by
`nodefence.agent.kube.client`).

One hierarchy, its class chosen in one place: `ClusterError(message, status)` is built as the
subclass its status stands for (`NotFound` for 404, `Conflict` for 409, ...), whoever builds
it (`api_error` for the client's exceptions, the simulated API server, a test's fake), so
callers catch `NotFound`, `Conflict`, `TooManyRequests`, `Forbidden` or `Gone` instead of
comparing numbers. `status` stays on every error for messages and metrics; an error without a
status (a timeout, a refused connection) is a plain `ClusterError`.
"""

from __future__ import annotations

import json
from typing import Any


class ClusterError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when there was one."""

    code: int | None = None  # the status this class stands for (None: any)

    def __new__(cls, message: str, status: int | None = None, refusal: str = "") -> ClusterError:
        if cls is ClusterError and status is not None:
            cls = BY_STATUS.get(status, ClusterError)
        return super().__new__(cls, message)

    def __init__(self, message: str, status: int | None = None, refusal: str = "") -> None:
        super().__init__(message)
        self.status = self.code if status is None else status
        self.refusal = refusal  # the server's reason for a refused request ("" when none)


class Forbidden(ClusterError):
    """403: the service account may not do this (RBAC)."""

    code = 403


class NotFound(ClusterError):
    """404: the object (or its resource, a CRD not installed) does not exist."""

    code = 404


class Conflict(ClusterError):
    """409: a stale resourceVersion, a failed uid precondition, or a name already taken."""

    code = 409


class Gone(ClusterError):
    """410: a watch's resourceVersion is too old (expired): list again."""

    code = 410


class TooManyRequests(ClusterError):
    """429: throttled, or an eviction a PodDisruptionBudget does not allow now."""

    code = 429


BY_STATUS: dict[int, type[ClusterError]] = {
    cls.code: cls for cls in (Forbidden, NotFound, Conflict, Gone, TooManyRequests) if cls.code
}


def api_error(what: str, err: Exception, *, refusal: bool = False) -> ClusterError:
    """The `ClusterError` of client call `what` that raised `err`. With `refusal`, an HTTP
    error's message carries the server's own words (an admission webhook's or a disruption
    budget's reason), when it gave any."""
    if isinstance(err, ClusterError):
        return err  # already says what and why
    status = getattr(err, "status", None)
    if isinstance(status, int) and hasattr(err, "reason"):  # an ApiException
        said = refusal_words(getattr(err, "body", None))
        message = f"{what}: {status} {err.reason}"
        if refusal and said:
            message += f": {said}"
        return ClusterError(message, status, said)
    return ClusterError(f"{what}: {type(err).__name__}: {err}")  # urllib3: refused, reset, ...


def refusal_words(body: Any) -> str:
    """The reason in a Status body of a refused request (the disruption budget's words)."""
    try:
        status = json.loads(body)
    except (TypeError, ValueError):
        return ""
    if not isinstance(status, dict):
        return ""
    causes = (status.get("details") or {}).get("causes") or []
    said = [str(c.get("message")) for c in causes if isinstance(c, dict) and c.get("message")]
    return "; ".join(said) or str(status.get("message") or "")
