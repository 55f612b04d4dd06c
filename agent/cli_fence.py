"""`nodefence fence` and `nodefence bmc check`: manual power control through the inventory."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any, TextIO

from agent.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from agent.inventory import Inventory, InventoryError, NodeInventory, load_inventory
from agent.power import PowerFencer
from agent.topology import Action, Outcome, Step
from backends.errors import FenceError
from backends.registry import build_backend
from backends.spec import DeviceSpec


def _load(path: str, err: TextIO) -> Inventory | None:
    try:
        return load_inventory(path)
    except InventoryError as e:
        print(f"nodefence: inventory error: {e}", file=err)
        return None


def _describe(dev: DeviceSpec) -> str:
    if dev.type == "ipmi":
        return f"ipmi {dev.address}:{dev.port} cipher {dev.cipher} as {dev.username}"
    if dev.type == "fence_agent":
        where = f" {_address(dev)}" if dev.address else ""
        who = f" as {dev.username}" if dev.username else ""
        return f"fence agent {dev.agent}{where}{who}"
    tls = "insecure" if dev.ssl_insecure else (f"ca {dev.ca_file}" if dev.ca_file else "system CAs")
    tls = tls if dev.scheme == "https" else "no TLS"
    return f"redfish {dev.base_url} auth {dev.auth}, {tls}, as {dev.username}"


def _address(dev: DeviceSpec) -> str:
    if dev.address is None:
        return "-"
    return dev.address if dev.port is None else f"{dev.address}:{dev.port}"


def _print_plan(node: NodeInventory, action: Action, out: TextIO) -> None:
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


def _confirm(node: str, action: Action, inp: TextIO, err: TextIO) -> bool:
    if not inp.isatty():
        print(
            f"nodefence: refusing to {action.value} node {node} without --yes "
            "(not on a terminal to ask)",
            file=err,
        )
        return False
    err.write(f"This will {action.value} node {node}. Type the node name to confirm: ")
    err.flush()
    return inp.readline().strip() == node


def run_fence(
    args: argparse.Namespace,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    inp: TextIO = sys.stdin,
) -> int:
    """`nodefence fence NODE`: exit 0 only when the asked-for state is proven."""
    inventory = _load(args.inventory, err)
    if inventory is None:
        return EXIT_USAGE
    try:
        node = inventory.node(args.node)
    except KeyError as e:
        print(f"nodefence: {e.args[0]}", file=err)
        return EXIT_USAGE
    action = Action(args.action)
    text = args.output == "text"
    if text:
        _print_plan(node, action, out)
    if args.dry_run:
        action = Action.STATUS
        if text:
            print("dry run: reading the power state only, nothing is changed", file=out)
    elif action is not Action.STATUS and not args.yes and not _confirm(node.name, action, inp, err):
        print("nodefence: not confirmed, nothing done", file=err)
        return EXIT_USAGE

    def show(step: Step) -> None:
        if text:
            print(_step_line(step), file=out, flush=True)

    fencer = PowerFencer(node, inventory.policy, on_step=show)
    outcome = asyncio.run(fencer.run(action))
    if text:
        _print_verdict(outcome, out)
    else:
        json.dump(_outcome_json(outcome), out, indent=2)
        out.write("\n")
    return EXIT_OK if outcome.success else EXIT_FAILED


def _print_verdict(outcome: Outcome, out: TextIO) -> None:
    o = outcome
    where = f" by level {o.level}" if o.level else ""
    if o.action is Action.STATUS:
        verdict = f"power {o.state.value}" if o.success else f"UNKNOWN: {o.reason}"
    elif o.success:
        proven = {Action.OFF: "proven OFF", Action.ON: "proven ON", Action.REBOOT: "rebooted"}
        verdict = f"{proven[o.action]}{where}"
        if o.action is Action.REBOOT:
            verdict += " (off was proven before power-on)"
    else:
        verdict = f"FAILED to {o.action.value}: {o.reason}"
        if o.off_proven:
            verdict += " (the node IS proven off)"
        elif o.action in (Action.OFF, Action.REBOOT):
            verdict += " (Off NOT proven)"
    print(f"node {o.node}: {verdict} in {o.elapsed:.3f}s", file=out)


def _outcome_json(o: Outcome) -> dict[str, Any]:
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


async def _check_all(inventory: Inventory, names: list[str]) -> list[dict[str, Any]]:
    async def one(node: str, level: int, dev: DeviceSpec) -> dict[str, Any]:
        row: dict[str, Any] = {
            "node": node,
            "level": level,
            "device": dev.name,
            "type": dev.type,
            "address": _address(dev),
        }
        try:
            backend = build_backend(node, dev)
        except FenceError as e:
            row.update(
                reachable=False,
                auth=False,
                power="unknown",
                reset=False,
                detail=str(e),
                reason=e.reason,
            )
            return row
        try:
            result = await backend.check()
        finally:
            with contextlib.suppress(FenceError):
                await backend.close()
        row.update(
            reachable=result.reachable,
            auth=result.authenticated,
            power=result.power.value,
            reset=result.reset_supported,
            detail=result.detail,
            reason=result.reason,
        )
        return row

    jobs = [
        one(name, li, dev)
        for name in names
        for li, level in enumerate(inventory.nodes[name].levels, start=1)
        for dev in level.devices
    ]
    return list(await asyncio.gather(*jobs))


def run_bmc_check(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence bmc check`: a table of every device; non-zero if any check fails."""
    inventory = _load(args.inventory, err)
    if inventory is None:
        return EXIT_USAGE
    names = list(args.nodes) or list(inventory.nodes)
    unknown = [n for n in names if n not in inventory.nodes]
    if unknown:
        print(f"nodefence: node {unknown[0]!r} is not in {inventory.path}", file=err)
        return EXIT_USAGE
    rows = asyncio.run(_check_all(inventory, names))
    ok = all(r["reachable"] and r["auth"] and r["reset"] and r["power"] != "unknown" for r in rows)
    if args.output == "json":
        json.dump({"ok": ok, "devices": rows}, out, indent=2)
        out.write("\n")
    else:
        _print_table(rows, out)
        failed = sum(1 for r in rows if not (r["reachable"] and r["auth"] and r["reset"]))
        print(f"{len(rows)} devices checked, {failed} failing", file=out)
    return EXIT_OK if ok else EXIT_FAILED


def _print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    yes = {True: "yes", False: "NO"}

    def reachable(r: dict[str, Any]) -> str:
        # A fence agent cannot tell silence from refusal: it never says "unreachable".
        return "?" if r["reason"] == "agent_failed" else yes[r["reachable"]]

    header = ["NODE", "LEVEL", "DEVICE", "TYPE", "ADDRESS", "REACHABLE", "AUTH", "POWER", "RESET"]
    table = [header] + [
        [
            r["node"],
            str(r["level"]),
            r["device"],
            r["type"],
            r["address"],
            reachable(r),
            yes[r["auth"]] if r["reachable"] else "-",
            r["power"],
            yes[r["reset"]] if r["auth"] else "-",
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for r in rows:
        if not (r["reachable"] and r["auth"] and r["reset"]):
            print(f"  {r['node']}/{r['device']}: {r['detail']}", file=out)
