"""`nodefence fence` and `nodefence bmc check`: manual power control through the inventory.

Before a power-off `fence` looks at the cluster, when it can
(`nodefence.agent.fencing.manual_client`): it warns about a node that is Ready and not in
maintenance, or being fenced by the leader, or the node this command runs on
(`nodefence.agent.fencing.advice`), and names the VMs that die with it; it says "already off"
instead of sending a power-off to a node whose every device reads Off; and it records the fence as a
FenceOperation (origin manual) for `nodefence history`. Ctrl-C, at the prompt or during the walk,
ends it with one line: what was sent on which channel, and the command to check the power state."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.inventory import device_address, load_or_say
from nodefence.agent.cli.options import (
    inventory_option,
    kubeconfig_option,
    output_option,
    records_namespace_option,
)
from nodefence.agent.config.inventory_file import Inventory, NodeInventory
from nodefence.agent.fencing.advice import NodeFacts, warnings, what_dies
from nodefence.agent.fencing.power_executor import PowerFencer
from nodefence.agent.fencing.topology import PowerOutcome, PowerRequest, Step
from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.backends.spec import DeviceSpec

if TYPE_CHECKING:
    from nodefence.agent.fencing.manual_client import ManualRecord


def _describe(dev: DeviceSpec) -> str:
    if dev.type == "ipmi":
        return f"ipmi {dev.address}:{dev.port} cipher {dev.cipher} as {dev.username}"
    if dev.type == "fence_agent":
        where = f" {device_address(dev)}" if dev.address else ""
        who = f" as {dev.username}" if dev.username else ""
        return f"fence agent {dev.agent}{where}{who}"
    tls = "insecure" if dev.ssl_insecure else (f"ca {dev.ca_file}" if dev.ca_file else "system CAs")
    tls = tls if dev.scheme == "https" else "no TLS"
    return f"redfish {dev.base_url} auth {dev.auth}, {tls}, as {dev.username}"


def _print_plan(node: NodeInventory, action: PowerRequest, out: TextIO) -> None:
    print(f"node {node.name}: action {action.value}", file=out)
    for li, level in enumerate(node.levels, start=1):
        for dev in level.devices:
            print(f"  level {li}  {dev.name:<12} {_describe(dev)}", file=out)


def _step_line(step: Step) -> str:
    line = f"[{step.elapsed:7.3f}s] level {step.level}  {step.device:<12} {step.request:<12} "
    line += step.result
    if step.detail and step.result not in ("sent", "on", "off"):
        line += f"  ({step.detail})"
    return line


def _confirm(node: str, action: PowerRequest, dies: str, inp: TextIO, err: TextIO) -> bool:
    verb = {
        PowerRequest.OFF: "power off",
        PowerRequest.REBOOT: "power-cycle",
        PowerRequest.ON: "power on",
    }
    what = verb.get(action, action.value)
    if not inp.isatty():
        print(
            f"nodefence: refusing to {what} node {node} without --yes (not on a terminal to ask)",
            file=err,
        )
        return False
    kills = f" ({dies} dies with it)" if dies else ""
    err.write(f"This will {what} node {node}{kills}. Type the node name to confirm: ")
    err.flush()
    return inp.readline().strip() == node


class Progress:
    """The walk as it goes: each step a line; on a terminal, the wait for a read-back as one
    line redrawn in place (elsewhere a line every 5 s). Remembers what went out, for Ctrl-C."""

    def __init__(self, out: TextIO, text: bool, record: ManualRecord | None) -> None:
        self.out = out
        self.text = text
        self.tty = text and out.isatty()
        self.record = record
        self.steps: list[Step] = []
        self.sending: str = ""  # "power-off" while a level's requests may be on their way
        self._drawn = False
        self._said_at = 0.0

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False

    def step(self, step: Step) -> None:
        """A step happened (`PowerFencer.on_step`)."""
        self.steps.append(step)
        if self.record is not None:
            self.record.step(step)
        if self.text:
            self._clear()
            print(_step_line(step), file=self.out, flush=True)

    async def guard(self, step: str) -> None:
        """Right before a level's power requests go out (`PowerFencer.guard`)."""
        self.sending = step

    def poll(
        self, level: int, device: str, request: str, waited: float, limit: float, last: str
    ) -> None:
        """A read-back not showing the wanted state yet (`PowerFencer.on_poll`)."""
        if not self.text:
            return
        line = (
            f"          level {level}  {device:<12} {request:<12} waiting {waited:4.1f} s of"
            f" {limit:g} s ({last})"
        )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
            self.out.flush()
            self._drawn = True
        elif waited - self._said_at >= 5.0 or waited < self._said_at:
            self._said_at = waited
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        """End an in-place line."""
        self._clear()
        self.out.flush()

    def interrupted(self, node: str, inventory: str) -> str:
        """One line for Ctrl-C: what was sent on which channel, and how to check."""
        sent = [s for s in self.steps if s.request in ("off", "on") and s.result == "sent"]
        check = f"nodefence fence {node} -i {inventory} -a status"
        if sent:
            where = ", ".join(f"level {s.level} {s.device}" for s in sent)
            verbs = sorted({s.request for s in sent})
            return (
                f"nodefence: interrupted after power-{'/'.join(verbs)} was sent to {node}"
                f" ({where}); its power state is unknown now: check it with `{check}`"
            )
        if self.sending:
            return (
                f"nodefence: interrupted while a {self.sending} request to {node} was going"
                f" out: it may have been sent; its power state is unknown: check it with"
                f" `{check}`"
            )
        return f"nodefence: interrupted before any power request was sent: {node} unchanged"


def _cluster_look(
    args: argparse.Namespace, node: str, action: PowerRequest
) -> tuple[ClusterApi | None, NodeFacts | None, str, str]:
    """(API, what the cluster says of the node, its uid, why the cluster was not consulted)."""
    if args.no_record or args.dry_run or action is PowerRequest.STATUS:
        return None, None, "", ""
    from nodefence.agent.cli.kube_access import kube_api
    from nodefence.agent.fencing.manual_client import node_facts

    api = kube_api(args.kubeconfig, None)
    if api is None:
        return None, None, "", "no cluster access (--kubeconfig, $KUBECONFIG, ~/.kube/config)"
    try:
        facts, uid = asyncio.run(node_facts(api, args.namespace, node))
    except ClusterError as e:
        return None, None, "", f"the cluster could not be read: {e}"
    return api, facts, uid, ""


def run_fence(
    args: argparse.Namespace,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    inp: TextIO = sys.stdin,
) -> int:
    """`nodefence fence NODE`: exit 0 only when the asked-for state is proven; 130 when
    interrupted (one line says what was sent and how to check)."""
    inventory = load_or_say(args.inventory, err)
    if inventory is None:
        return EXIT_USAGE
    try:
        node = inventory.node(args.node)
    except KeyError as e:
        print(f"nodefence: {e.args[0]}", file=err)
        return EXIT_USAGE
    action = PowerRequest(args.action)
    text = args.output == "text"
    if text:
        _print_plan(node, action, out)
    if args.dry_run:
        action = PowerRequest.STATUS
        if text:
            print("dry run: reading the power state only, nothing is changed", file=out)
    try:
        api, facts, uid, unrecorded = _cluster_look(args, node.name, action)
        for warning in warnings(node.name, action, facts, os.environ.get("NODE_NAME")):
            print(f"WARNING: {warning}", file=err)
        already = (
            _already_off(node, inventory, out if text else None)
            if action is PowerRequest.OFF
            else None
        )
    except KeyboardInterrupt:
        print(
            f"\nnodefence: interrupted before any power request was sent: {node.name} unchanged",
            file=err,
        )
        return EXIT_INTERRUPTED
    if already is not None:
        return _finish(args, already, None, api, uid, out, err, unrecorded, node)
    if action is not PowerRequest.STATUS and not args.yes:
        try:
            confirmed = _confirm(node.name, action, what_dies(node.name, action, facts), inp, err)
        except KeyboardInterrupt:
            print("\nnodefence: not confirmed (interrupted), nothing done", file=err)
            return EXIT_INTERRUPTED
        if not confirmed:
            print("nodefence: not confirmed, nothing done", file=err)
            return EXIT_USAGE
    record = None
    if api is not None:
        from nodefence.agent.cli.kube_access import who
        from nodefence.agent.fencing.manual_client import ManualRecord

        record = ManualRecord(node, action, who(), time.time)
    progress = Progress(out, text, record)
    fencer = PowerFencer(
        node,
        inventory.policy,
        on_step=progress.step,
        guard=progress.guard,
        on_poll=progress.poll,
    )
    try:
        outcome = asyncio.run(fencer.run(action))
    except KeyboardInterrupt:
        progress.close()
        line = progress.interrupted(node.name, args.inventory)
        print(line, file=err)
        if record is not None and api is not None and progress.steps:
            _store(api, args.namespace, record, None, line.removeprefix("nodefence: "), uid, err)
        return EXIT_INTERRUPTED
    progress.close()
    return _finish(args, outcome, record, api, uid, out, err, unrecorded, node)


def _already_off(
    node: NodeInventory, inventory: Inventory, out: TextIO | None
) -> PowerOutcome | None:
    """An outcome when every device of the node reads Off now (nothing sent), else None."""
    if out is not None:
        print("reading the power state first (a node already off gets no power-off)", file=out)
        out.flush()
    looked = asyncio.run(PowerFencer(node, inventory.policy).run(PowerRequest.STATUS))
    if not looked.off_proven:
        return None
    if out is not None:
        for step in looked.steps:
            print(_step_line(step), file=out)
        print(
            f"node {node.name} is already off (every device reads Off): no power-off sent", file=out
        )
    return PowerOutcome(
        node.name,
        PowerRequest.OFF,
        success=True,
        state=looked.state,
        off_proven=True,
        steps=looked.steps,
        elapsed=looked.elapsed,
    )


def _finish(
    args: argparse.Namespace,
    outcome: PowerOutcome,
    record: ManualRecord | None,
    api: ClusterApi | None,
    uid: str,
    out: TextIO,
    err: TextIO,
    unrecorded: str,
    node: NodeInventory,
) -> int:
    if args.output == "text":
        print(f"node {outcome.node}: {_verdict(outcome)} in {outcome.elapsed:.3f}s", file=out)
    else:
        json.dump(_outcome_json(outcome), out, indent=2)
        out.write("\n")
    if outcome.action is not PowerRequest.STATUS and not args.dry_run:
        if api is not None:
            if record is None:  # already off: recorded with the read-back as its steps
                from nodefence.agent.cli.kube_access import who
                from nodefence.agent.fencing.manual_client import ManualRecord

                record = ManualRecord(node, outcome.action, who(), time.time)
                for step in outcome.steps:
                    record.step(step)
            _store(api, args.namespace, record, outcome, _verdict(outcome), uid, err)
        elif unrecorded and not args.no_record:
            print(f"nodefence: not recorded for `nodefence history`: {unrecorded}", file=err)
    return EXIT_OK if outcome.success else EXIT_FAILED


def _store(
    api: ClusterApi,
    namespace: str,
    record: ManualRecord,
    outcome: PowerOutcome | None,
    verdict: str,
    uid: str,
    err: TextIO,
) -> None:
    try:
        name = asyncio.run(record.store(api, namespace, outcome, verdict, uid))
    except (ClusterError, KeyboardInterrupt) as e:
        print(f"nodefence: not recorded for `nodefence history`: {e}", file=err)
        return
    print(f"recorded as FenceOperation {namespace}/{name} (`nodefence history`)", file=err)


def _verdict(o: PowerOutcome) -> str:
    where = f" by level {o.level}" if o.level else ""
    if o.action is PowerRequest.STATUS:
        return f"power {o.state.value}" if o.success else f"UNKNOWN: {o.reason}"
    if o.success:
        proven = {
            PowerRequest.OFF: "proven OFF",
            PowerRequest.ON: "proven ON",
            PowerRequest.REBOOT: "rebooted",
        }
        verdict = f"{proven[o.action]}{where}"
        if o.action is PowerRequest.OFF and not any(s.request == "off" for s in o.steps):
            verdict = "already OFF: no power-off sent"
        if o.action is PowerRequest.REBOOT:
            verdict += " (off was proven before power-on)"
        return verdict
    verdict = f"FAILED to {o.action.value}: {o.reason}"
    if o.off_proven:
        verdict += " (the node IS proven off)"
    elif o.action in (PowerRequest.OFF, PowerRequest.REBOOT):
        verdict += " (Off NOT proven)"
    return verdict


def _outcome_json(o: PowerOutcome) -> dict[str, Any]:
    return {
        "node": o.node,
        "action": o.action.value,
        "success": o.success,
        "state": o.state.value,
        "offProven": o.off_proven,
        "level": o.level,
        "elapsed": round(o.elapsed, 4),
        "errors": o.errors,
        "steps": [
            {
                "level": s.level,
                "device": s.device,
                "request": s.request,
                "result": s.result,
                "elapsed": round(s.elapsed, 4),
                "detail": s.detail,
            }
            for s in o.steps
        ],
    }


def add_fence_arguments(fence: argparse.ArgumentParser) -> None:
    """`nodefence fence NODE`: its arguments."""
    fence.description = (
        "Switch a node's power through the levels of its BMC inventory entry and read "
        "the state back. Exits 0 only when the asked-for state is proven."
    )
    fence.add_argument("node", help="node name as written in the inventory")
    inventory_option(fence)
    fence.add_argument(
        "--action",
        "-a",
        choices=["off", "on", "reboot", "status"],
        default="off",
        help="off (default): power off and prove Off; reboot: off, proven, then on",
    )
    fence.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, show the plan and read the current power state; change nothing",
    )
    fence.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    output_option(fence)
    fence.add_argument(
        "--no-record",
        action="store_true",
        help="do not look at the cluster: no warning about a live node, no FenceOperation"
        " record for `nodefence history`",
    )
    records_namespace_option(fence)
    kubeconfig_option(fence)
