"""API errors as the real server reports them: an HTTP code and a `meta/v1` Status body.

The store raises these; the HTTP layer turns them into responses, so a client sees the same
`reason` and `code` over the wire as an in-process caller sees on the exception.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


class ApiError(Exception):
    """A failed API call: `code` (HTTP status), `reason` (Status reason), `details`."""

    code = 500
    reason = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        name: str = "",
        group: str = "",
        kind: str = "",
        causes: list[Obj] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes or []

    def status(self) -> Obj:
        """The `Status` object the real API server would send for this error."""
        details: Obj = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            body["details"] = details
        return body


class BadRequest(ApiError):
    """400: the request itself is malformed (bad JSON, bad selector, mismatched name)."""

    code = 400
    reason = "BadRequest"


class NotFound(ApiError):
    """404: no such object, resource or path."""

    code = 404
    reason = "NotFound"


class MethodNotAllowed(ApiError):
    """405: the resource does not support this verb."""

    code = 405
    reason = "MethodNotAllowed"


class AlreadyExists(ApiError):
    """409: create of a name that is taken."""

    code = 409
    reason = "AlreadyExists"


class Conflict(ApiError):
    """409: a stale resourceVersion or a failed uid/resourceVersion precondition."""

    code = 409
    reason = "Conflict"


class Gone(ApiError):
    """410: a watch asked for a resourceVersion older than the retained history."""

    code = 410
    reason = "Expired"


class UnsupportedMediaType(ApiError):
    """415: a patch content type this resource does not accept."""

    code = 415
    reason = "UnsupportedMediaType"


class Invalid(ApiError):
    """422: the object fails validation (bad name, immutable field changed, failed JSON patch)."""

    code = 422
    reason = "Invalid"


class TooManyRequests(ApiError):
    """429: an eviction a PodDisruptionBudget forbids."""

    code = 429
    reason = "TooManyRequests"


class Forbidden(ApiError):
    """403: refused, e.g. by a validating admission webhook."""

    code = 403
    reason = "Forbidden"


class InternalError(ApiError):
    """500: what the real server reports as an internal error."""


def resource_label(group: str, plural: str) -> str:
    """`plural.group` (or `plural` for the core group), as messages name a resource."""
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> NotFound:
    """`nodes "x" not found`, with the details the real server fills in."""
    return NotFound(
        f'{resource_label(group, plural)} "{name}" not found', name=name, group=group, kind=plural
    )


def conflict(group: str, plural: str, name: str, why: str) -> Conflict:
    """`Operation cannot be fulfilled on leases.coordination.k8s.io "x": <why>`."""
    return Conflict(
        f'Operation cannot be fulfilled on {resource_label(group, plural)} "{name}": {why}',
        name=name,
        group=group,
        kind=plural,
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
