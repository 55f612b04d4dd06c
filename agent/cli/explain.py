"""`nodefence explain NODE|OPERATION`: why a node was powered off, from its fence certificate.

Reads the FenceOperation records (the Kubernetes API only: `--kubeconfig`, else $KUBECONFIG,
else the in-cluster account) and tells the newest operation of a node (or the one named by
its record name or operation id) as a story: the decision and what the leader knew then,
every power request and read-back per channel, the Lease confirmations before each
irreversible step, the phases, the VMs. `-o json` prints the record's spec and status whole.
`story` is pure and tested on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.kube_access import kube_api
from nodefence.agent.cli.options import kubeconfig_option, output_option, records_namespace_option
from nodefence.agent.fencing.outcome import vm_summary, vms_from_record
from nodefence.agent.kube.client import ClusterError

Json = dict[str, Any]


def pick(records: list[Json], wanted: str) -> Json | None:
    """The record named `wanted`, or of operation id `wanted`, or the newest of node `wanted`."""
    for rec in records:
        meta, spec = rec.get("metadata") or {}, rec.get("spec") or {}
        if wanted in (meta.get("name"), spec.get("operationId")):
            return rec
    of_node = [r for r in records if (r.get("spec") or {}).get("nodeName") == wanted]
    if not of_node:
        return None
    return max(of_node, key=lambda r: str((r.get("status") or {}).get("startedAt") or ""))


def _time(entry: Json) -> str:
    at = str(entry.get("at") or "")
    return at[11:23] if len(at) >= 23 else at or "?"


def _decision_lines(d: Json) -> list[str]:
    if d.get("manual"):
        return [
            f"Manual fence (nodefence fence -a {d.get('action', '?')}) at {d.get('at', '?')}"
            f" by {d.get('requestedBy') or d.get('leader', '?')}"
        ]
    lines = [f"Decision at {d.get('at', '?')} by leader {d.get('leader', '?')}:"]
    verdict = d.get("verdict") or {}
    if verdict:
        lines.append(f"  verdict: {verdict.get('health')}: {verdict.get('reason')}")
    hb = d.get("lastHeartbeat")
    if isinstance(hb, dict):
        lines.append(
            f"  last heartbeat: {hb.get('at')} ({hb.get('ageSeconds')} s before), "
            f"boot {hb.get('boot') or '?'}, sequence {hb.get('seq')}"
        )
    elif "lastHeartbeat" in d:
        lines.append("  last heartbeat: none heard by this leader")
    kubelet = d.get("kubelet") or {}
    if kubelet:
        age = kubelet.get("leaseAgeSeconds")
        lines.append(
            f"  kubelet Lease: {'unknown age' if age is None else f'{age} s old'}, "
            f"Ready {kubelet.get('ready')}"
        )
    summary = d.get("peerSummary") or {}
    if summary:
        lines.append(
            f"  peers: {summary.get('unreachable')} unreachable, {summary.get('reachable')} "
            f"reachable (needed {summary.get('needed')} of {summary.get('available')})"
        )
    for r in d.get("peerReports") or []:
        said = "reachable" if r.get("reachable") else "unreachable"
        lines.append(f"    {r.get('peer')}: {said} ({r.get('ageSeconds')} s before)")
    return lines


def _step_line(s: Json) -> str:
    kind = s.get("kind")
    if kind == "power":
        bmc = f"{s.get('device')} ({s.get('type', '?')} {s.get('address', '?')})"
        text = f"level {s.get('level')} {bmc}: {s.get('request')} -> {s.get('result')}"
        if s.get("detail") and s.get("result") not in ("sent", "on", "off"):
            text += f"  [{s['detail']}]"
    elif kind == "lease-confirmed":
        generation = s.get("leaseGeneration", "?")
        version = s.get("leaseResourceVersion", "?")
        text = (
            f"Lease confirmed by {s.get('leader')} before {s.get('before')} (generation "
            f"{generation}, resourceVersion {version})"
        )
    elif kind == "phase":
        text = f"phase -> {s.get('phase')}" + (f": {s['reason']}" if s.get("reason") else "")
    elif kind == "walk":
        verdict = (
            f"Off proven by level {s.get('level')}" if s.get("offProven") else "Off NOT proven"
        )
        text = f"power walk ended: {verdict} in {s.get('elapsedSeconds')} s"
        for e in s.get("errors") or []:
            text += f"\n{'':16}error: {e}"
    elif kind == "watchdog-proof":
        text = f"Off proven by the watchdog deadline: {s.get('detail')}"
    elif kind == "tainted":
        text = f"Node tainted out-of-service (uid {s.get('nodeUID') or '?'})"
    elif kind == "node-deleted":
        text = f"Node deleted (uid {s.get('nodeUID') or '?'})"
    elif kind == "resumed":
        text = f"taken over by leader {s.get('leader')}"
    else:
        text = f"{kind}: " + ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("at", "kind"))
    return f"  {_time(s):<12}  {text}"


def story(record: Json) -> list[str]:
    """The record told as lines of text (see the module doc)."""
    meta, spec, st = (
        record.get("metadata") or {},
        record.get("spec") or {},
        record.get("status") or {},
    )
    node = spec.get("nodeName", "?")
    lines = [
        f"FenceOperation {meta.get('name', '?')}: node {node}, operation "
        f"{spec.get('operationId', '?')}, action {spec.get('action', 'off')}",
        f"phase {st.get('phase', '?')}"
        + (f" ({st['reason']})" if st.get("reason") else "")
        + f"; Off proven: {'yes, by ' + str(st.get('proof')) if st.get('offProven') else 'no'}"
        + (f" (level {st['level']})" if st.get("level") else "")
        + f"; started {st.get('startedAt', '?')}, updated {st.get('updatedAt', '?')}",
    ]
    evidence = st.get("evidence")
    if not isinstance(evidence, dict):
        lines.append("no evidence stored (an operation recorded before fence certificates)")
        return lines
    for d in evidence.get("decisions") or []:
        lines += _decision_lines(d)
    steps = evidence.get("steps") or []
    lines.append(f"Steps ({len(steps)}, times UTC):")
    omitted = evidence.get("omittedSteps")
    for i, s in enumerate(steps):
        if omitted and i == 40:
            lines.append(f"  ... {omitted} steps left out ...")
        lines.append(_step_line(s))
    heard = st.get("lastHeartbeatAt")
    outcomes = vms_from_record(st.get("vms"))
    if outcomes:
        lines.append(f"VMs: {vm_summary(outcomes, node)}")
    for vm in st.get("vms") or []:
        where = f"running on {vm['runningOn']}" if vm.get("runningOn") else "not running"
        kubevirt = vm.get("virtualization") == "kubevirt"
        if kubevirt:
            policy = f"KubeVirt, runStrategy {vm.get('runStrategy') or '(no VirtualMachine)'}"
        else:
            policy = str(vm.get("runPolicy"))
        if not vm.get("runningOn") and not vm.get("expectedRestart"):
            field = "runStrategy" if kubevirt else "runPolicy"
            where = f"left stopped by its {field}: start it by hand"
        outage, after = vm.get("outageSeconds"), vm.get("recoveredAfterSeconds")
        when = ""
        if outage is not None:
            when = f", down {outage} s from the node's last heartbeat ({heard})"
        if after is not None:
            when += f"{';' if when else ','} {after} s after the Node's cleanup"
        lines.append(f"VM {vm.get('namespace')}/{vm.get('name')} ({policy}): {where}{when}")
    for e in st.get("errors") or []:
        lines.append(f"error: {e}")
    return lines


def run_explain(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence explain`: 0 when the operation was found and told, 2 when unknown."""
    api = kube_api(args.kubeconfig, err)
    if api is None:
        return EXIT_USAGE
    try:
        records = asyncio.run(api.list_records(args.namespace))
    except ClusterError as e:
        print(f"nodefence: cannot read FenceOperations in {args.namespace}: {e}", file=err)
        return EXIT_FAILED
    record = pick(records, args.target)
    if record is None:
        print(
            f"nodefence: no FenceOperation of node or operation {args.target!r} in namespace "
            f"{args.namespace}",
            file=err,
        )
        return EXIT_USAGE
    if args.output == "json":
        whole = {k: record.get(k) for k in ("metadata", "spec", "status")}
        json.dump(whole, out, indent=2)
        out.write("\n")
    else:
        print("\n".join(story(record)), file=out)
    return EXIT_OK


def add_explain_arguments(explain: argparse.ArgumentParser) -> None:
    """`nodefence explain NODE|OPERATION`: its arguments."""
    explain.description = (
        "Tell the newest FenceOperation of NODE (or the one with that record name or "
        "operation id) from its fence certificate: what the leader knew when it decided, "
        "every power request and read-back per BMC channel, the Lease confirmations before "
        "each irreversible step. -o json prints the record whole."
    )
    explain.add_argument("target", metavar="NODE|OPERATION", help="node name or operation")
    records_namespace_option(explain)
    output_option(explain)
    kubeconfig_option(explain)
