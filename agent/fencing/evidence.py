"""The fence certificate: the evidence of one fencing operation, kept in its record.

An operator asking "why was my node powered off?" needs evidence, not a log line. Every
FenceOperation keeps, in `status.evidence`:
- `decisions`: what the leader knew when it declared the node dead (last heartbeat: when,
  boot and sequence number; the kubelet Lease age and Ready; the peer reports; the verdict),
  and which leader decided;
- `steps`: in order, with wall-clock time: every power request and read-back per channel
  (device, protocol, BMC address, request, result), every Lease confirmation before an
  irreversible step (leader identity, Lease generation = its `leaseTransitions`, and the
  resourceVersion renewed), the phase changes, the watchdog proof when one was used, the
  taint, the deletion and the power-on.

Entries are JSON-ready dicts; the log is bounded (the first `KEEP_FIRST` and last
`KEEP_LAST` steps are kept, with a count of those left out) so a node that fails to fence
for days does not outgrow its record. A new leader that resumes an operation adopts the
evidence stored so far and goes on appending. No secret is ever part of it: BMC identity is
protocol, device name and address.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodefence.agent.config.inventory_file import NodeInventory
from nodefence.agent.fencing.topology import Step
from nodefence.backends.spec import DeviceSpec

Json = dict[str, Any]
KEEP_FIRST = 40
KEEP_LAST = 200
_DECISIONS = 5


def stamp(wall: float) -> str:
    """An RFC 3339 UTC time with milliseconds, as the record's other times."""
    return utc_text(dt.datetime.fromtimestamp(wall, dt.UTC), "milliseconds")


def utc_text(at: dt.datetime, timespec: str) -> str:
    """`at` (UTC) as `YYYY-MM-DDTHH:MM:SS.fff[fff]Z`, the fraction cut (not rounded) to
    `timespec` ("milliseconds" or "microseconds"): `isoformat`, a fifth of `strftime`'s cost,
    which gives the same text from year 1000 on (`strftime` does not pad earlier years)."""
    if at.year >= 1000:
        return at.isoformat(timespec=timespec)[:-6] + "Z"  # "+00:00" -> "Z"
    text = at.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return (text[:-3] if timespec == "milliseconds" else text) + "Z"


def bmc_identity(dev: DeviceSpec) -> Json:
    """How a step names the BMC it talked to (never a credential)."""
    if dev.type == "fence_agent":
        where = dev.address if dev.port is None else f"{dev.address}:{dev.port}"
        return {"device": dev.name, "type": dev.type, "agent": dev.agent, "address": where}
    if dev.type == "redfish":
        return {"device": dev.name, "type": dev.type, "address": dev.base_url}
    return {"device": dev.name, "type": dev.type, "address": f"{dev.address}:{dev.port}"}


@dataclass
class Certificate:
    """The evidence of one operation (see the module doc)."""

    operation: str
    decisions: list[Json] = field(default_factory=list)
    steps: list[Json] = field(default_factory=list)
    omitted: int = 0  # steps left out between the first and the last ones kept

    def add(self, entry: Json) -> None:
        """Append one step, keeping the log bounded."""
        self.steps.append(entry)
        if len(self.steps) > KEEP_FIRST + KEEP_LAST:
            del self.steps[KEEP_FIRST]
            self.omitted += 1

    def to_json(self) -> Json:
        """The record's `status.evidence`."""
        doc: Json = {"operation": self.operation, "decisions": self.decisions, "steps": self.steps}
        if self.omitted:
            doc["omittedSteps"] = self.omitted
        return doc

    @classmethod
    def from_json(cls, operation: str, doc: object) -> Certificate:
        """What a stored `status.evidence` holds (anything unreadable is dropped, not fatal)."""
        cert = cls(operation)
        if not isinstance(doc, dict) or doc.get("operation") != operation:
            return cert
        cert.decisions = [d for d in doc.get("decisions") or [] if isinstance(d, dict)]
        cert.steps = [s for s in doc.get("steps") or [] if isinstance(s, dict)]
        omitted = doc.get("omittedSteps")
        cert.omitted = omitted if isinstance(omitted, int) and omitted >= 0 else 0
        return cert


class EvidenceBook:
    """The certificates of the operations this leader runs, by node (one operation each)."""

    def __init__(self, leader: str, wall: Callable[[], float]) -> None:
        self.leader = leader
        self.wall = wall
        self._certs: dict[str, Certificate] = {}
        self._pending: dict[str, Json] = {}  # node -> decision not yet tied to an operation

    def of(self, node: str, operation: str) -> Certificate:
        """The certificate of `operation` on `node` (a new one for a new operation)."""
        cert = self._certs.get(node)
        if cert is None or cert.operation != operation:
            cert = Certificate(operation)
            self._certs[node] = cert
        pending = self._pending.pop(node, None)
        if pending is not None:
            cert.decisions = [*cert.decisions, pending][-_DECISIONS:]
        return cert

    def decided(self, node: str, facts: Json | None) -> None:
        """This leader declared `node` dead knowing `facts`; kept for its operation."""
        entry: Json = {"at": stamp(self.wall()), "leader": self.leader, **(facts or {})}
        self._pending[node] = entry

    def adopt(self, node: str, operation: str, record: Json) -> None:
        """A resumed record: go on from the evidence it holds."""
        stored = (record.get("status") or {}).get("evidence")
        cert = Certificate.from_json(operation, stored)
        self._certs[node] = cert
        self.step(node, operation, "resumed", leader=self.leader)

    def forget(self, node: str) -> None:
        """Drop the node's certificate (its operation is finished and forgotten)."""
        self._certs.pop(node, None)
        self._pending.pop(node, None)

    def step(self, node: str, operation: str, kind: str, **fields: object) -> None:
        """Append one step of `kind` with its fields, stamped now."""
        entry: Json = {"at": stamp(self.wall()), "kind": kind}
        entry.update({k: v for k, v in fields.items() if v is not None and v != ""})
        self.of(node, operation).add(entry)

    def power_step(self, node: str, operation: str, inv: NodeInventory, s: Step) -> None:
        """One power request or read-back of a walk, with the BMC it went to."""
        dev = next((d for d in inv.devices() if d.name == s.device), None)
        where = bmc_identity(dev) if dev is not None else {"device": s.device}
        self.step(
            node,
            operation,
            "power",
            level=s.level,
            **where,
            request=s.request,
            result=s.result,
            detail=s.detail[:500],
        )

    def lease(self, node: str, operation: str, before: str, lease: Json | None) -> None:
        """The Lease was confirmed ours right before the irreversible step `before`."""
        self.step(
            node, operation, "lease-confirmed", before=before, leader=self.leader, **(lease or {})
        )

    def to_json(self, node: str, operation: str) -> Json | None:
        """The certificate to store with the record of `operation`, if there is one."""
        cert = self._certs.get(node)
        if cert is None or cert.operation != operation:
            if node not in self._pending:
                return None
            cert = self.of(node, operation)
        return cert.to_json()
