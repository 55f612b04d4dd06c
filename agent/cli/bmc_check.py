"""`nodefence bmc check -i FILE [NODES...]`: every device of the inventory probed (reachable,
credentials accepted, power state readable, hard power-off offered, certificate), as a table
or `-o json`; non-zero if any check fails. Changes nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any, TextIO

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.inventory import device_address, load_or_say
from nodefence.agent.cli.options import inventory_option, output_option
from nodefence.agent.config.inventory_file import Inventory
from nodefence.backends.errors import FenceError
from nodefence.backends.registry import build_backend
from nodefence.backends.spec import DeviceSpec


async def _check_all(inventory: Inventory, names: list[str]) -> list[dict[str, Any]]:
    async def one(node: str, level: int, dev: DeviceSpec) -> dict[str, Any]:
        row: dict[str, Any] = {
            "node": node,
            "level": level,
            "device": dev.name,
            "type": dev.type,
            "address": device_address(dev),
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
    inventory = load_or_say(args.inventory, err)
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


def add_bmc_arguments(bmc: argparse.ArgumentParser) -> None:
    """`nodefence bmc check`: its arguments."""
    bmc_sub = bmc.add_subparsers(dest="bmc_command", required=True, metavar="BMC_COMMAND")
    check = bmc_sub.add_parser(
        "check",
        help="probe every device: reachable, credentials, power state, reset supported",
    )
    check.add_argument("nodes", nargs="*", help="only these nodes (default: all)")
    inventory_option(check)
    output_option(check)
