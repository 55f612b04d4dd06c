"""The outcome of a chaos run: the result object and the summary printed at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ChaosResult:
    """What a run did and found (also written as the JSON report)."""

    report: dict[str, Any]
    path: Path

    @property
    def ok(self) -> bool:
        """True when no invariant was violated."""
        return not self.report["violations"]


def print_summary(result: ChaosResult) -> None:
    """The counts at the end of a run, and every violation."""
    counts = result.report["counts"]
    faults = ", ".join(f"{k} {v}" for k, v in counts["faults"].items()) or "none"
    fences = counts["fences"]
    print(f"== faults injected: {faults}")
    hit = counts.get("power_losses_of") or {}
    if hit:
        print(
            f"== power losses of the leader's machine: {hit.get('leader_machine', 0)}, of a"
            f" broker's machine: {hit.get('broker_machine', 0)}"
        )
    print(
        f"== fences: {fences['records']} records, {fences['proven_off']} proven off, "
        f"{fences['nodes_deleted']} Nodes deleted"
    )
    slowest = counts["max_recovery_seconds"]
    extra = f" (slowest {slowest:.1f} s)" if slowest is not None else ""
    print(f"== recoveries: {counts['recoveries']} VMs Running again elsewhere{extra}")
    for kill in result.report.get("phase_kills", []):
        aim = "hit" if kill["hit"] else "MISSED its phase"
        print(
            f"== {kill['kind']} at {kill['t']:.1f} s: {kill['killed']} killed, {kill['victim']}'s "
            f"{kill['record']} was {kill['phase']} ({kill['when']}; {aim})"
        )
    for missed in result.report.get("missed", []):
        print(f"== {missed['kind']} on {missed['node']}: armed, never sprang")
    total = sum(counts["violations"].values())
    per = ", ".join(f"{k} {v}" for k, v in counts["violations"].items())
    print(f"== violations: {total} ({per})")
    for v in result.report["violations"]:
        t = "   end" if v["t"] is None else f"{v['t']:8.2f}s"
        print(f"   {t}  {v['invariant']:<16} {v['node']:<8} {v['detail']}")
    print(f"== report: {result.path}")
    print("== verdict: " + ("PASS, no invariant violated" if result.ok else "FAIL"))
