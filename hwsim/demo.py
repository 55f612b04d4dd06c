"""`nodefence-hwsim demo`: the quick tour of manual fencing against emulated BMCs.

Starts IPMI + Redfish emulators for a few nodes on 127.0.0.1, then runs the real
`nodefence` command line against them: check every BMC, power a node off and prove it,
power it back on, show a BMC that ignores power-off being reported as a failure (never as
success), and a dead IPMI channel escalating to Redfish. Exits non-zero if any outcome
differs from what nodefence promises.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from nodefence.hwsim.bmcs import BmcFleet
from nodefence.hwsim.fleet import Fleet


@dataclass(frozen=True)
class DemoStep:
    """One command of the tour and the exit code nodefence promises for it."""

    title: str
    args: tuple[str, ...]
    expect_exit: int


async def _nodefence(args: tuple[str, ...]) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodefence.agent.cli.main", *args, stdin=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


async def run_demo(nodes: int, workdir: Path) -> int:
    """Play the tour; 0 when every step ended as promised."""
    if nodes < 5:
        print("nodefence-hwsim demo: needs at least 5 nodes", file=sys.stderr)
        return 2
    fleet = Fleet.of_size(nodes)
    bmcs = BmcFleet(fleet, workdir.resolve(), power_timeout=1.5)
    await bmcs.start()
    results: list[tuple[str, bool]] = []
    try:
        inv = str(bmcs.write_inventory(workdir.resolve() / "inventory.yaml"))
        print(f"== {nodes} emulated nodes, each with an IPMI and a Redfish BMC on 127.0.0.1")
        print(f"== inventory: {inv}\n")
        steps = [
            DemoStep("check every BMC", ("bmc", "check", "-i", inv), 0),
            DemoStep("read node-3's power", ("fence", "node-3", "-i", inv, "-a", "status"), 0),
            DemoStep(
                "fence node-3 (power off, prove Off)", ("fence", "node-3", "-i", inv, "--yes"), 0
            ),
            DemoStep(
                "power node-3 back on", ("fence", "node-3", "-i", inv, "-a", "on", "--yes"), 0
            ),
        ]
        for step in steps:
            results.append(await _play(step))

        fleet["node-4"].set_faults(ignore_off=True)
        results.append(
            await _play(
                DemoStep(
                    "node-4's BMC acknowledges power-off but the node stays on: must FAIL",
                    ("fence", "node-4", "-i", inv, "--yes"),
                    1,
                )
            )
        )
        fleet["node-4"].set_faults(ignore_off=False)

        await bmcs.ipmi_bmcs["node-5"].stop()
        results.append(
            await _play(
                DemoStep(
                    "node-5's IPMI BMC is dead: escalate to level 2 (Redfish)",
                    ("fence", "node-5", "-i", inv, "--yes"),
                    0,
                )
            )
        )
    finally:
        await bmcs.stop()
    print("== summary")
    for title, ok in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {title}")
    good = all(ok for _, ok in results)
    print("demo: every outcome as promised" if good else "demo: an outcome differed!")
    return 0 if good else 1


async def _play(step: DemoStep) -> tuple[str, bool]:
    print(f"-- {step.title}\n$ nodefence {' '.join(step.args)}", flush=True)
    code = await _nodefence(step.args)
    ok = code == step.expect_exit
    print(f"(exit {code}{'' if ok else f', expected {step.expect_exit}'})\n", flush=True)
    return step.title, ok
