"""Where fencing operations are stored: the FenceOperation records of this leader.

`RecordStore` keeps, per node, the record last written or read (its resourceVersion is the
base of the next write) and the moment the node could first see it (the watchdog proof counts
from there). A 409 caused by this process's own earlier write, one that timed out but landed,
is taken in stride; one caused by another writer raises `Superseded`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nodefence.agent.fencing.operation import Operation
from nodefence.agent.fencing.records import to_record
from nodefence.agent.kube.client import ClusterApi, ClusterError, Conflict

log = logging.getLogger("nodefence.fencing")


class Superseded(Exception):
    """Another writer (a newer leader) updated the record: stop acting on it."""


class RecordStore:
    """The records of one leader's operations (see the module doc)."""

    def __init__(
        self,
        api: ClusterApi,
        namespace: str,
        leader_id: str,
        clock: Callable[[], float],
        wall: Callable[[], float],
        on_saved: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.api = api
        self.on_saved = on_saved  # told every record the API accepted (the leader's cache)
        self.namespace = namespace
        self.leader_id = leader_id
        self.clock = clock
        self.wall = wall
        self._records: dict[str, dict[str, Any]] = {}
        self.marked_at: dict[str, float] = {}  # node -> record stored/taken over (our clock)
        # The fence certificate to store with an operation (nodefence.agent.fencing.evidence), if
        # any.
        self.evidence: Callable[[Operation], dict[str, Any] | None] | None = None

    def has(self, node: str) -> bool:
        """Whether a record of the node's operation was stored or taken over here."""
        return node in self._records

    def adopt(self, node: str, record: dict[str, Any], now: float) -> None:
        """Take `record` over as the node's: the node can see it from `now` on (at the latest)."""
        self._records[node] = record
        self.marked_at.setdefault(node, now)

    def started(self, node: str) -> str | None:
        """When the node's stored operation started (its record's startedAt), if known."""
        status = (self._records.get(node) or {}).get("status") or {}
        started = status.get("startedAt")
        return started if isinstance(started, str) else None

    def forget(self, node: str) -> None:
        """Drop what is kept about the node's record."""
        self._records.pop(node, None)
        self.marked_at.pop(node, None)

    async def save(self, op: Operation, *, required: bool = False) -> None:
        """Store `op`. Failures other than a conflict raise `ClusterError` when `required`,
        else are logged (the next save carries the whole state)."""
        for _ in range(3):
            body = to_record(
                op,
                self.namespace,
                self.leader_id,
                self._records.get(op.node),
                wall=self.wall(),
                evidence=self.evidence(op) if self.evidence is not None else None,
                heard_at=None
                if op.last_heartbeat is None
                else self.wall() - (self.clock() - op.last_heartbeat),
            )
            try:
                saved = await self.api.save_record(self.namespace, body)
                self._records[op.node] = saved
            except Conflict:
                if await self._own_write_landed(op):
                    continue
                raise Superseded() from None
            except ClusterError as err:
                if required:
                    raise
                log.error("cannot store the fencing record of %s: %s", op.node, err)
                return
            # The record is in the API now: from here on the node can see it is being fenced.
            self.marked_at.setdefault(op.node, self.clock())
            if self.on_saved is not None:
                self.on_saved(saved)
            return
        raise Superseded()

    async def _own_write_landed(self, op: Operation) -> bool:
        """After a 409: is the stored record of `op` one this process wrote (an earlier write
        that timed out but landed)? Then adopt it as the base of the next write."""
        try:
            records = await self.api.list_records(self.namespace, op.node)
        except ClusterError as err:
            log.error("cannot re-read the fencing record of %s: %s", op.node, err)
            return False
        for rec in records:
            if (rec.get("spec") or {}).get("operationId") != op.id:
                continue
            if (rec.get("status") or {}).get("leader") == self.leader_id:
                self._records[op.node] = rec
                return True
        return False
