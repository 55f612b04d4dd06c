"""`nodefence-hwsim`: run emulated hardware on 127.0.0.1 for demos, tests and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from nodefence.hwsim.scenarios.catalogue import SCENARIOS

VIRTS = ("deckhouse", "kubevirt", "both")
VIRT_HELP = (
    "whose VMs: deckhouse (Deckhouse Virtualization, default), kubevirt (upstream KubeVirt: "
    "its CRDs, VM -> VMI -> virt-launcher pod, migrations) or both (as many of each)"
)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="nodefence-hwsim",
        description="Emulated BMCs and cluster for nodefence, on 127.0.0.1 only.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="start emulated BMCs for a few nodes and fence one by hand (the quick tour)",
    )
    demo.add_argument("--nodes", type=int, default=5)
    demo.add_argument("--workdir", default="run/demo", help="where files are written")

    bmcs = sub.add_parser(
        "bmcs",
        help="start IPMI + Redfish emulators for node-1..node-N and write a matching inventory",
    )
    bmcs.add_argument("--nodes", type=int, required=True, help="number of nodes")
    bmcs.add_argument(
        "--inventory-out",
        required=True,
        help="inventory file to write once every emulator listens (TLS files and the "
        "password file are written beside it)",
    )
    bmcs.add_argument("--username", default="admin")
    bmcs.add_argument("--power-timeout", type=float, default=10.0)
    bmcs.add_argument("--no-redfish", action="store_true", help="IPMI only (one level per node)")
    bmcs.add_argument(
        "--fence-agents",
        action="store_true",
        help="write the inventory with type: fence_agent devices (fence_ipmilan, fence_redfish)",
    )
    bmcs.add_argument(
        "--ready-file", help="write the control API URL here once ready (for scripts)"
    )

    scen = sub.add_parser(
        "scenario",
        help="play a failure on a simulated cluster and print its timeline and verdict",
    )
    scen.add_argument(
        "name",
        choices=list(SCENARIOS),
    )
    scen.add_argument("--nodes", type=int, default=5)
    scen.add_argument("--vms", type=int, default=10)
    scen.add_argument("--workdir", default="run/scenario", help="where files and logs go")
    scen.add_argument("--fast", action="store_true", help="short Lease and kubelet timings (tests)")
    scen.add_argument(
        "--cleanup",
        choices=["delete", "taint"],
        default="",
        help="the agents' fencing.cleanup: delete the fenced Node (default) or keep it tainted"
        " out-of-service (then after_proof reboot unless --after-proof off)",
    )
    scen.add_argument(
        "--after-proof", choices=["off", "reboot"], default="", help="the agents' after_proof"
    )
    scen.add_argument("--virt", choices=VIRTS, default="deckhouse", help=VIRT_HELP)

    cluster = sub.add_parser(
        "cluster",
        help="run a simulated cluster (two brokers, API, BMCs, agents, VMs) until Ctrl-C",
    )
    cluster.add_argument("--nodes", type=int, default=5)
    cluster.add_argument("--vms", type=int, default=10)
    cluster.add_argument("--workdir", default="run/cluster")
    cluster.add_argument("--virt", choices=VIRTS, default="deckhouse", help=VIRT_HELP)

    chaos = sub.add_parser(
        "chaos",
        help="a seeded random schedule of faults on a simulated cluster, invariants checked",
    )
    chaos.add_argument("--seed", type=int, default=1, help="same seed, same fault schedule")
    chaos.add_argument("--duration", type=float, default=120.0, help="seconds of chaos")
    chaos.add_argument("--nodes", type=int, default=6)
    chaos.add_argument("--vms", type=int, default=12)
    chaos.add_argument(
        "--max-faulty",
        type=int,
        default=2,
        help="faulty slots at once (default 2; see docs/chaos.md)",
    )
    chaos.add_argument(
        "--mean-gap", type=float, default=4.0, help="mean seconds between fault starts"
    )
    chaos.add_argument(
        "--profile", choices=["fast", "default"], default="default", help="detection profile"
    )
    chaos.add_argument(
        "--recovery-deadline",
        type=float,
        default=30.0,
        help="seconds after a Node deletion for its ColdStandby VMs to run again",
    )
    chaos.add_argument(
        "--watchdog",
        action="store_true",
        help="nodes feed emulated watchdogs and the leader may count self-fences; adds the "
        "issue-12 faults (agent stops, leader kills at each phase, channel errors, a BMC+PDU "
        "node, record saves that land late, two faults on one node)",
    )
    chaos.add_argument("--workdir", default="run/chaos", help="where files and logs go")
    chaos.add_argument("--virt", choices=VIRTS, default="deckhouse", help=VIRT_HELP)
    chaos.add_argument("--report", help="JSON report path (default WORKDIR/chaos-report.json)")

    sim = sub.add_parser(
        "simulate",
        help="deterministic simulation of the leader: many seeds in virtual time, invariants"
        " checked after every step (docs/simulation.md)",
    )
    sim.add_argument("--runs", type=int, default=100, help="how many seeds (default 100)")
    sim.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    sim.add_argument("--replay", type=int, metavar="SEED", help="run this one seed again, exactly")
    sim.add_argument(
        "-v", "--verbose", action="store_true", help="with --replay: print the event log"
    )

    fault = sub.add_parser("fault", help="inject faults into a running `bmcs` fleet or `cluster`")
    fault.add_argument(
        "--control", required=True, help="control URL printed by `bmcs` or `cluster`"
    )
    fault.add_argument("machine")
    fault.add_argument(
        "settings",
        nargs="+",
        help="FIELD=VALUE, e.g. unreachable=true slow=0.5 ignore_off=true off_delay=2 "
        "fail_first=3 wrong_credentials=true, or power=cut|on|off",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "bmcs":
        if args.nodes < 1:
            print("nodefence-hwsim: --nodes must be at least 1", file=sys.stderr)
            return 2
        return asyncio.run(_run_bmcs(args))
    if args.command == "fault":
        return _run_fault(args)
    if args.command == "scenario":
        if args.nodes < 4:
            print("nodefence-hwsim: scenarios need at least 4 nodes", file=sys.stderr)
            return 2
        from nodefence.hwsim.broker import INSTALL_HINT, find_mosquitto
        from nodefence.hwsim.scenarios.run import run_scenario

        try:
            find_mosquitto()
        except FileNotFoundError:
            print(f"nodefence-hwsim: {INSTALL_HINT}", file=sys.stderr)
            return 2
        if args.virt not in SCENARIOS[args.name].virts:
            only = " or ".join(SCENARIOS[args.name].virts)
            print(f"nodefence-hwsim: scenario {args.name} runs with --virt {only}", file=sys.stderr)
            return 2
        ok, _ = run_scenario(
            args.name,
            Path(args.workdir).resolve(),
            args.nodes,
            args.vms,
            fast=args.fast,
            cleanup=args.cleanup,
            after_proof=args.after_proof,
            virt=args.virt,
        )
        return 0 if ok else 1
    if args.command == "cluster":
        return _run_cluster(args)
    if args.command == "chaos":
        return _run_chaos(args)
    if args.command == "simulate":
        return _run_simulate(args)
    if args.command == "demo":
        from nodefence.hwsim.demo import run_demo

        return asyncio.run(run_demo(args.nodes, Path(args.workdir)))
    return 2


async def _run_bmcs(args: argparse.Namespace) -> int:
    from nodefence.hwsim.bmcs import BmcFleet
    from nodefence.hwsim.control import ControlServer
    from nodefence.hwsim.fleet import Fleet

    inventory = Path(args.inventory_out).resolve()
    fleet = Fleet.of_size(args.nodes)
    bmcs = BmcFleet(
        fleet,
        inventory.parent,
        username=args.username,
        redfish=not args.no_redfish,
        power_timeout=args.power_timeout,
    )
    control = ControlServer(fleet)
    await bmcs.start()
    control.start()
    try:
        bmcs.write_inventory(inventory, fence_agents=args.fence_agents)
        for name in fleet.names():
            ipmi = bmcs.ipmi_bmcs[name].port
            rf = bmcs.redfish_bmcs[name].url if name in bmcs.redfish_bmcs else "-"
            print(f"{name}: ipmi 127.0.0.1:{ipmi}  redfish {rf}")
        print(f"inventory: {inventory}")
        print(f"control:   {control.url}  (nodefence-hwsim fault --control {control.url} ...)")
        if args.ready_file:
            Path(args.ready_file).write_text(control.url + "\n", encoding="utf-8")
        print("running; Ctrl-C to stop", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        control.stop()
        await bmcs.stop()
    return 0


def _run_cluster(args: argparse.Namespace) -> int:
    import threading

    from nodefence.hwsim.broker import INSTALL_HINT, find_mosquitto
    from nodefence.hwsim.simcluster import SimCluster
    from nodefence.hwsim.simcluster_settings import ClusterSettings

    try:
        find_mosquitto()
    except FileNotFoundError:
        print(f"nodefence-hwsim: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from nodefence.hwsim.control import ControlServer

    workdir = Path(args.workdir).resolve()
    settings = ClusterSettings(nodes=args.nodes, vms=args.vms, bmcs=True, virt=args.virt)
    cluster = SimCluster(workdir, settings)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster.start()
    control = ControlServer(cluster.fleet)
    control.start()
    try:
        print(f"simulated cluster of {args.nodes} nodes and {args.vms} VMs on 127.0.0.1")
        for line in cluster_commands(cluster, control.url, workdir, virt=args.virt):
            print(f"  {line}")
        print("running; Ctrl-C stops every process it started", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        control.stop()
        cluster.stop()
    return 0


def program(name: str) -> str:
    """How to run one of our commands from any shell: its bare name when it is on PATH, else
    the full path beside this interpreter (README's `.venv/bin/` install, not activated)."""
    import shutil

    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def cluster_commands(
    cluster: Any, control_url: str, workdir: Path, virt: str = "deckhouse"
) -> list[str]:
    """What `nodefence-hwsim cluster` prints: commands that work when pasted."""
    nodefence, hwsim = program("nodefence"), program("nodefence-hwsim")
    kube = f"--kubeconfig {cluster.kubeconfig}"
    kinds = "nodes,vm" if virt == "deckhouse" else "nodes,vm,vmi"
    return [
        f"export KUBECONFIG={cluster.kubeconfig}   # then kubectl and nodefence find it",
        f"kubectl {kube} get {kinds}",
        f"{nodefence} status -c {cluster.agent_config('node-1')}",
        f"{nodefence} history {kube}",
        f"{nodefence} fence node-3 -i {cluster.settings.inventory} -a status",
        f"{nodefence} pause --reason 'trying it out' {kube}   # and: {nodefence} resume",
        f"{hwsim} fault --control {control_url} node-3 power=cut   # a power loss",
        f"fault control: {control_url}  (GET /machines)",
        f"agent logs: {workdir / 'logs'}",
    ]


def _run_chaos(args: argparse.Namespace) -> int:
    import threading

    from nodefence.hwsim.broker import INSTALL_HINT, find_mosquitto
    from nodefence.hwsim.chaos.run import ChaosOptions, run_chaos
    from nodefence.hwsim.chaos.schedule import ChaosSettings, watchdog_settings

    if args.nodes < 4 or not 1 <= args.max_faulty < args.nodes - 2:
        print(
            "nodefence-hwsim: chaos needs at least 4 nodes and 1 <= --max-faulty < nodes - 2",
            file=sys.stderr,
        )
        return 2
    if args.duration <= 0 or args.mean_gap <= 0:
        print("nodefence-hwsim: --duration and --mean-gap must be positive", file=sys.stderr)
        return 2
    try:
        find_mosquitto()
    except FileNotFoundError:
        print(f"nodefence-hwsim: {INSTALL_HINT}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    # With --watchdog: the issue-12 faults too, and the last node behind a PDU outlet.
    pdus = (f"node-{args.nodes}",) if args.watchdog else ()
    tuning = {"max_faulty": args.max_faulty, "mean_gap": args.mean_gap}
    schedule = watchdog_settings(pdus, **tuning) if args.watchdog else ChaosSettings(**tuning)
    opts = ChaosOptions(
        seed=args.seed,
        duration=args.duration,
        workdir=workdir,
        nodes=args.nodes,
        vms=args.vms,
        profile=args.profile,
        report=Path(args.report).resolve() if args.report else None,
        recovery_deadline=args.recovery_deadline,
        schedule=schedule,
        watchdog=args.watchdog,
        pdus=pdus,
        virt=args.virt,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = run_chaos(opts, stop)
    return 0 if result.ok else 1


def _run_simulate(args: argparse.Namespace) -> int:
    if sys.flags.hash_randomization:
        # One seed must print the same output in every process: string hashing (and so set
        # order) has to be the same too. Start again with PYTHONHASHSEED=0.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        argv = [sys.executable, "-m", "nodefence.hwsim.cli", *sys.argv[1:]]
        sys.stdout.flush()
        os.execve(sys.executable, argv, env)
    return simulate(args, sys.stdout)


def simulate(args: argparse.Namespace, out: TextIO) -> int:
    """`simulate` in this process (as it is, hash seed included); returns the exit code."""
    from nodefence.hwsim.sim.report import replay, run_batch

    if args.replay is not None:
        result = replay(args.replay, args.verbose, out)
        return 1 if result.violations else 0
    if args.runs < 1:
        print("nodefence-hwsim: --runs must be at least 1", file=sys.stderr)
        return 2
    print(f"simulating seeds {args.seed}..{args.seed + args.runs - 1}", file=out, flush=True)
    summary = run_batch(range(args.seed, args.seed + args.runs), out)
    return 1 if summary.failing else 0


def _parse_value(text: str) -> object:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _run_fault(args: argparse.Namespace) -> int:
    faults: dict[str, object] = {}
    power: str | None = None
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"nodefence-hwsim: expected FIELD=VALUE, got {item!r}", file=sys.stderr)
            return 2
        if key == "power":
            power = value
        else:
            faults[key] = _parse_value(value)
    base = args.control.rstrip("/") + f"/machines/{args.machine}"
    calls = []
    if faults:
        calls.append((base + "/faults", faults))
    if power:
        calls.append((base + "/power", {"action": power}))
    for url, body in calls:
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                print(resp.read().decode())
        except urllib.error.HTTPError as err:
            print(f"nodefence-hwsim: {json.loads(err.read()).get('error')}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
