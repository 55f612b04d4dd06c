"""The cluster-wide pause switch (`nodefence pause --reason ...`, `nodefence resume`).

A pause lives as the annotation `nodefence.io/paused` on the leader Lease: it outlives every
leader, and every candidate reads it with the Lease it renews anyway (no extra API request).
While it is there the leader keeps judging, reporting and alerting, and powers nobody off (see
`nodefence.agent.detection.policy.pause_guard` and the fence executor). Per node, the same is
maintenance.

The value is JSON as `nodefence pause` writes it (`{"reason": ..., "by": ..., "since": ...}`);
any other non-empty text (`kubectl annotate lease nodefence-leader nodefence.io/paused="BMC
firmware"`) is a pause whose reason is that text: an annotation someone wrote by hand still
pauses. Pure: parsing and formatting only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PAUSE_ANNOTATION = "nodefence.io/paused"
MAX_REASON = 500  # an annotation is small; a reason is a sentence


@dataclass(frozen=True)
class Pause:
    """Fencing is paused cluster-wide: why, by whom, since when (UTC, ISO 8601)."""

    reason: str
    by: str = ""
    since: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Pause | None:
        """The pause an annotation value says, or None for no value (or only blanks)."""
        if text is None or not text.strip():
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("reason"), str):
            return cls(
                doc["reason"][:MAX_REASON] or "no reason given",
                str(doc.get("by") or "")[:200],
                str(doc.get("since") or "")[:40],
            )
        return cls(text.strip()[:MAX_REASON])

    def annotation(self) -> str:
        """The annotation value (JSON) for this pause."""
        return json.dumps({"reason": self.reason, "by": self.by, "since": self.since})

    def describe(self) -> str:
        """One line for people: "by alice since 2025-01-02T10:00:00Z: BMC firmware"."""
        who = f" by {self.by}" if self.by else ""
        when = f" since {self.since}" if self.since else ""
        return f"paused{who}{when}: {self.reason}"
