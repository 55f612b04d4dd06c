"""The one error a Kubernetes API call of nodefence raises (re-exported by `agent.cluster`)."""

from __future__ import annotations

import json
from typing import Any


class ClusterError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
