"""The one error a Kubernetes API call of nodefence raises (re-exported by `agent.cluster`)."""

from __future__ import annotations


class ClusterError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
