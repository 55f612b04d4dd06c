"""`nodefence` command line: the entry point and its sub-commands.

Sub-command modules are imported only when chosen, to keep start-up lean (a manual fence
pays for the drivers it uses and nothing else).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (no secrets ever appear in it)."""
    parser = argparse.ArgumentParser(
        prog="nodefence",
        description="Fencing and failover agent for Kubernetes clusters that run VMs.",
    )
    parser.add_argument("--version", action="version", version=f"nodefence {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fence = sub.add_parser(
        "fence",
        help="power-fence a node by hand through its BMCs and prove the result",
        description=(
            "Switch a node's power through the levels of its BMC inventory entry and read "
            "the state back. Exits 0 only when the asked-for state is proven."
        ),
    )
    fence.add_argument("node", help="node name as written in the inventory")
    fence.add_argument("--inventory", "-i", required=True, help="BMC inventory YAML file")
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
    fence.add_argument("-o", "--output", choices=["text", "json"], default="text")

    agent = sub.add_parser(
        "agent",
        help="run the per-node agent: heartbeats, health endpoint, probe answers, watchdog",
    )
    fencer = sub.add_parser(
        "fencer",
        help="run a fencer: leader candidate that judges, fences and recovers",
    )
    for role, node_help in (
        (agent, "this node's name (default: $NODE_NAME, as the DaemonSet sets it)"),
        (fencer, "the node this fencer runs on (default: $NODE_NAME, else $POD_NAME or the host)"),
    ):
        role.add_argument("--config", "-c", required=True, help="agent config YAML file")
        role.add_argument("--node", help=node_help)
        role.add_argument(
            "--log-level",
            default=os.environ.get("NODEFENCE_LOG_LEVEL", "info"),
            choices=["debug", "info", "warning"],
            help="default: $NODEFENCE_LOG_LEVEL or info",
        )

    status = sub.add_parser(
        "status", help="the current leader and, per node, heartbeat and kubelet lease ages"
    )
    status.add_argument("--config", "-c", required=True, help="agent config YAML file")
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a view")

    bmc = sub.add_parser("bmc", help="BMC inventory tools")
    bmc_sub = bmc.add_subparsers(dest="bmc_command", required=True, metavar="BMC_COMMAND")
    check = bmc_sub.add_parser(
        "check",
        help="probe every device: reachable, credentials, power state, reset supported",
    )
    check.add_argument("nodes", nargs="*", help="only these nodes (default: all)")
    check.add_argument("--inventory", "-i", required=True, help="BMC inventory YAML file")
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")

    kubeconfig_help = "kubeconfig file (default: $KUBECONFIG, else the in-cluster account)"
    explain = sub.add_parser(
        "explain",
        help="why a node was powered off: its fencing operation's evidence, step by step",
        description=(
            "Tell the newest FenceOperation of NODE (or the one with that record name or "
            "operation id) from its fence certificate: what the leader knew when it decided, "
            "every power request and read-back per BMC channel, the Lease confirmations before "
            "each irreversible step. -o json prints the record whole."
        ),
    )
    explain.add_argument("target", metavar="NODE|OPERATION", help="node name or operation")
    explain.add_argument(
        "-n", "--namespace", default="nodefence", help="where the records live (nodefence)"
    )
    explain.add_argument("-o", "--output", choices=["text", "json"], default="text")
    explain.add_argument("--kubeconfig", help=kubeconfig_help)
    migrate = sub.add_parser(
        "migrate",
        help="live-migrate a running VM to another node (VirtualMachineOperation Evict)",
        description=(
            "Create a VirtualMachineOperation of type Evict for the VM; with --wait follow it "
            "(Running -> Migrating -> Running on another node) and exit 0 only when it moved."
        ),
    )
    migrate.add_argument("vm", help="VirtualMachine name")
    migrate.add_argument("-n", "--namespace", default="default", help="its namespace")
    migrate.add_argument("--wait", action="store_true", help="follow it until it is done")
    migrate.add_argument(
        "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
    )
    migrate.add_argument(
        "--force",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "spec.force of the Evict, as `d8 v evict --force`: converge by CPU throttling "
            "(--no-force: never); default: the VM's liveMigrationPolicy decides"
        ),
    )
    migrate.add_argument("--kubeconfig", help=kubeconfig_help)

    maint = sub.add_parser(
        "maintenance", help="take a node out of service on purpose: move its VMs, never fence it"
    )
    msub = maint.add_subparsers(dest="maintenance_command", required=True, metavar="ACTION")
    enter = msub.add_parser(
        "enter",
        help="mark the node (never fenced), cordon it, live-migrate its VMs off, drain pods",
        description=(
            "Refuse a node that is not Ready, or whose VMs have no room elsewhere. Mark the "
            "node nodefence.io/maintenance=draining (still guarded) and cordon it, hand "
            "leadership off if it leads, evict every VM on it by VirtualMachineOperation Evict "
            "(following operations that already exist) and wait for VMs migrating onto it, "
            "until none is left, checked by a fresh look; then (unless --vms-only) evict the "
            "other pods as `kubectl drain --ignore-daemonsets --delete-emptydir-data` does, "
            "honouring PodDisruptionBudgets; only then mark it nodefence.io/maintenance=true "
            "(never fenced: it may be powered off). On failure the node stays cordoned and "
            "draining: guarded."
        ),
    )
    enter.add_argument("node", help="node name")
    enter.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for the whole drain (default 600)"
    )
    enter.add_argument("--vms-only", action="store_true", help="move the VMs, leave other pods")
    enter.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="migrations at once (default 2, as KubeVirt's outbound migrations per node)",
    )
    enter.add_argument(
        "--force",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="spec.force of every Evict (see `migrate --force`); default: each VM's policy",
    )
    enter.add_argument(
        "--evict-unmanaged",
        action="store_true",
        help="also evict pods that no controller manages (kubectl drain's --force)",
    )
    enter.add_argument(
        "--allow-not-ready",
        action="store_true",
        help="drain a node that is not Ready (it stays guarded until its VMs are gone)",
    )
    enter.add_argument(
        "--lease",
        default="nodefence/nodefence-leader",
        metavar="NAMESPACE/NAME",
        help="the agents' leader Lease (kubernetes.namespace/lease_name of their config)",
    )
    enter.add_argument("--kubeconfig", help=kubeconfig_help)
    leave = msub.add_parser(
        "exit", help="clear the maintenance mark and undo the cordon `enter` made"
    )
    leave.add_argument("node", help="node name")
    leave.add_argument(
        "--force", action="store_true", help="even when the node is not Ready (it may be fenced)"
    )
    leave.add_argument("--kubeconfig", help=kubeconfig_help)
    show = msub.add_parser("list", help="nodes in maintenance: state, cordon, VMs left")
    show.add_argument("--all", action="store_true", help="every node, not only marked ones")
    show.add_argument("--kubeconfig", help=kubeconfig_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "fence":
        from agent.cli_fence import run_fence

        return run_fence(args)
    if args.command in ("agent", "fencer", "status"):
        from agent.cli_agent import run_agent_command, run_fencer_command, run_status

        if args.command == "agent":
            return run_agent_command(args)
        return run_fencer_command(args) if args.command == "fencer" else run_status(args)
    if args.command == "bmc":
        from agent.cli_fence import run_bmc_check

        return run_bmc_check(args)
    if args.command == "explain":
        from agent.cli_explain import run_explain

        return run_explain(args)
    if args.command in ("migrate", "maintenance"):
        from agent.cli_maintenance import run_maintenance, run_migrate

        return run_migrate(args) if args.command == "migrate" else run_maintenance(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
