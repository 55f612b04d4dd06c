"""`nodefence history [NODE]`: every fence, automatic and manual, from the FenceOperation
records (Events expire after an hour; the records stay until someone deletes them).

One row per record, oldest first: when it started (UTC, to the millisecond: the decision's
time from its evidence, else the record's `startedAt`), the node, its origin (the leader, or
`nodefence fence` by someone), the outcome, the proof, the longest VM outage counted from
the node's last heartbeat, the operation id and the reason. `rows` is pure and tested alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.kube_access import kube_api
from nodefence.agent.cli.options import kubeconfig_option, output_option, records_namespace_option
from nodefence.agent.fencing.outcome import longest_outage, vm_summary, vms_from_record
from nodefence.agent.kube.client import ClusterError

Json = dict[str, Any]


def _started(rec: Mapping[str, Any]) -> str:
    st = rec.get("status") or {}
    evidence = st.get("evidence")
    decisions = (evidence.get("decisions") if isinstance(evidence, Mapping) else None) or []
    if decisions and isinstance(decisions[0], Mapping) and decisions[0].get("at"):
        return str(decisions[0]["at"])
    return str(st.get("startedAt") or "")


def _outcome(st: Mapping[str, Any]) -> str:
    phase = str(st.get("phase") or "Pending")
    if phase == "Manual":
        return "proven off" if st.get("offProven") else "not proven off"
    if phase == "FenceFailed":
        return f"FenceFailed (attempt {st.get('attempts') or 0})"
    return phase


def _proof(st: Mapping[str, Any]) -> str:
    if not st.get("offProven"):
        return "-"
    proof = str(st.get("proof") or "read-back")
    return f"{proof}, level {st['level']}" if st.get("level") else proof


def rows(records: list[Json], node: str | None = None) -> list[Json]:
    """The history rows of `records` (only `node`'s when given), oldest first."""
    out = []
    for rec in records:
        spec, st = rec.get("spec") or {}, rec.get("status") or {}
        if node is not None and spec.get("nodeName") != node:
            continue
        vms = vms_from_record(st.get("vms"))
        outage = longest_outage(vms or ())
        manual = spec.get("origin") == "manual"
        out.append(
            {
                "started": _started(rec),
                "node": str(spec.get("nodeName", "?")),
                "origin": f"manual ({spec.get('requestedBy') or '?'})" if manual else "automatic",
                "action": str(spec.get("action") or "off"),
                "phase": str(st.get("phase") or "Pending"),
                "outcome": _outcome(st),
                "proof": _proof(st),
                "outageSeconds": outage,
                "vms": "" if vms is None else vm_summary(vms, str(spec.get("nodeName", ""))),
                "operation": str(spec.get("operationId", "")),
                "record": str((rec.get("metadata") or {}).get("name", "")),
                "reason": str(st.get("reason") or ""),
                "updated": str(st.get("updatedAt") or ""),
            }
        )
    return sorted(out, key=lambda r: r["started"])


def render(found: list[Json]) -> list[str]:
    """The rows as a table, the reason and the VMs under each row."""
    head = ["STARTED (UTC)", "NODE", "ORIGIN", "ACTION", "OUTCOME", "PROOF", "VM OUTAGE", "OP"]
    table = [head]
    for r in found:
        outage = "-" if r["outageSeconds"] is None else f"{r['outageSeconds']:.1f}s"
        table.append(
            [
                r["started"],
                r["node"],
                r["origin"],
                r["action"],
                r["outcome"],
                r["proof"],
                outage,
                r["operation"],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(table[0], widths, strict=True)).rstrip()]
    for row, r in zip(table[1:], found, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if r["reason"]:
            lines.append(f"    {r['reason']}")
        if r["vms"] and r["vms"] not in r["reason"]:
            lines.append(f"    VMs: {r['vms']}")
    return lines


def run_history(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence history`: 0 (also when there is none yet), 1 when the records cannot be read."""
    api = kube_api(args.kubeconfig, err)
    if api is None:
        return EXIT_USAGE
    try:
        records = asyncio.run(api.list_records(args.namespace, args.node))
    except ClusterError as e:
        print(f"nodefence: cannot read FenceOperations in {args.namespace}: {e}", file=err)
        return EXIT_FAILED
    found = rows(records, args.node)
    if args.output == "json":
        json.dump(found, out, indent=2)
        out.write("\n")
        return EXIT_OK
    if not found:
        which = f" of node {args.node}" if args.node else ""
        print(f"no fence{which} recorded in namespace {args.namespace}", file=out)
        return EXIT_OK
    print("\n".join(render(found)), file=out)
    print(
        "(outage: from the node's last heartbeat to the VM Running elsewhere; "
        "`nodefence explain OP` tells one fence step by step)",
        file=out,
    )
    return EXIT_OK


def add_history_arguments(history: argparse.ArgumentParser) -> None:
    """`nodefence history [NODE]`: its arguments."""
    history.description = (
        "List the FenceOperation records, oldest first: start time (UTC, milliseconds),"
        " node, origin (automatic or manual), outcome, proof, longest VM outage (from the"
        " node's last heartbeat), reason. Events expire; the records stay until deleted."
    )
    history.add_argument("node", nargs="?", help="only this node's fences")
    records_namespace_option(history)
    output_option(history)
    kubeconfig_option(history)
