"""`nodefence` command line: the entry point and its sub-commands.

Sub-command modules are imported only when chosen, to keep start-up lean (a manual fence
pays for the drivers it uses and nothing else). Inside an agent pod the config and the
inventory are where the DaemonSet mounts them: `--config` and `--inventory` default to those
paths (or `$NODEFENCE_CONFIG`, `$NODEFENCE_INVENTORY`). Output into a closed pipe (`status |
head`) ends quietly; Ctrl-C ends a command with one line, never a traceback (exit 130).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli_exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from agent.virt_names import AUTO, MODES

# Where the DaemonSet mounts them (deploy/base/agent-daemonset.yaml).
POD_CONFIG = "/etc/nodefence/config/agent.yaml"
POD_INVENTORY = "/etc/nodefence/inventory/inventory.yaml"
KUBECONFIG_HELP = (
    "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster account)"
)


def _config_option(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("NODEFENCE_CONFIG") or POD_CONFIG
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help=f"agent config YAML file (default: $NODEFENCE_CONFIG, else {POD_CONFIG})",
    )


def _inventory_option(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("NODEFENCE_INVENTORY") or POD_INVENTORY
    parser.add_argument(
        "--inventory",
        "-i",
        default=default,
        help=f"BMC inventory YAML file (default: $NODEFENCE_INVENTORY, else {POD_INVENTORY})",
    )


class _VersionAction(argparse.Action):
    """`--version`: version, commit, build date, Python and library versions."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from agent.build_info import describe

        print(describe())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (no secrets ever appear in it)."""
    parser = argparse.ArgumentParser(
        prog="nodefence",
        description="Fencing and failover agent for Kubernetes clusters that run VMs.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        nargs=0,
        help=f"print the version ({__version__}), commit, build date and library versions",
    )
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
    _inventory_option(fence)
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
    fence.add_argument(
        "--no-record",
        action="store_true",
        help="do not look at the cluster: no warning about a live node, no FenceOperation"
        " record for `nodefence history`",
    )
    fence.add_argument(
        "-n", "--namespace", default="nodefence", help="where the records live (nodefence)"
    )
    fence.add_argument("--kubeconfig", help=KUBECONFIG_HELP)

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
        _config_option(role)
        role.add_argument("--node", help=node_help)
        role.add_argument(
            "--log-level",
            default=os.environ.get("NODEFENCE_LOG_LEVEL", "info"),
            choices=["debug", "info", "warning"],
            help="default: $NODEFENCE_LOG_LEVEL or info",
        )

    status = sub.add_parser(
        "status",
        help="the leader's view: nodes, fencing, pause, BMC and inventory health; exit 1 when"
        " someone must act",
        description=(
            "Print the leader's view (published over MQTT every second): per node its state,"
            " heartbeat and kubelet Lease ages, maintenance, BMC checks and agent version; the"
            " fencing operations with their phase, attempt, last error and the VMs down; a"
            " pause; the inventory; alerts. Exit 0 when nothing needs anyone, 1 when someone"
            " must act (a failed fence, VMs down or left stopped, a dead node held by a pause,"
            " a rejected inventory, an alert that asks for it, a STALE view: its leader is"
            " gone, or no view at all), 2 on bad input."
        ),
    )
    _config_option(status)
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a view")

    bmc = sub.add_parser("bmc", help="BMC inventory tools")
    bmc_sub = bmc.add_subparsers(dest="bmc_command", required=True, metavar="BMC_COMMAND")
    check = bmc_sub.add_parser(
        "check",
        help="probe every device: reachable, credentials, power state, reset supported",
    )
    check.add_argument("nodes", nargs="*", help="only these nodes (default: all)")
    _inventory_option(check)
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")

    kubeconfig_help = KUBECONFIG_HELP
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
    virt_help = (
        "the VM APIs: auto (every one the cluster serves), deckhouse (virtualization."
        "deckhouse.io) or kubevirt (kubevirt.io); default auto"
    )
    migrate = sub.add_parser(
        "migrate",
        help="live-migrate a running VM to another node (VirtualMachineOperation Evict, or "
        "a KubeVirt VirtualMachineInstanceMigration)",
        description=(
            "Create a VirtualMachineOperation of type Evict for the VM (for a KubeVirt VM: a "
            "VirtualMachineInstanceMigration); with --wait follow it (Running -> Migrating -> "
            "Running on another node) and exit 0 only when it moved."
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
            "(--no-force: never); default: the VM's liveMigrationPolicy decides "
            "(Deckhouse only)"
        ),
    )
    migrate.add_argument("--virtualization", choices=MODES, default=AUTO, help=virt_help)
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
            "(a KubeVirt VM as its evictionStrategy says: a VirtualMachineInstanceMigration, "
            "or its launcher pod evicted) "
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
    enter.add_argument("--virtualization", choices=MODES, default=AUTO, help=virt_help)
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
    show.add_argument("--virtualization", choices=MODES, default=AUTO, help=virt_help)
    show.add_argument("--kubeconfig", help=kubeconfig_help)

    history = sub.add_parser(
        "history",
        help="every fence, automatic and manual, from the FenceOperation records",
        description=(
            "List the FenceOperation records, oldest first: start time (UTC, milliseconds),"
            " node, origin (automatic or manual), outcome, proof, longest VM outage (from the"
            " node's last heartbeat), reason. Events expire; the records stay until deleted."
        ),
    )
    history.add_argument("node", nargs="?", help="only this node's fences")
    history.add_argument(
        "-n", "--namespace", default="nodefence", help="where the records live (nodefence)"
    )
    history.add_argument("-o", "--output", choices=["text", "json"], default="text")
    history.add_argument("--kubeconfig", help=kubeconfig_help)

    lease_help = "the agents' leader Lease (kubernetes.namespace/lease_name of their config)"
    pause = sub.add_parser(
        "pause",
        help="stop all fencing cluster-wide: nodes are still judged and alerted on",
        description=(
            "Pause fencing in the whole cluster (per node: `maintenance`). The leader keeps"
            " detecting, reporting and alerting, and powers nobody off until `nodefence"
            " resume`; a fence whose Off is proven finishes its cleanup. Stored as the"
            " annotation nodefence.io/paused on the leader Lease: it outlives any leader."
        ),
    )
    pause.add_argument("--reason", required=True, help="why (shown by status and alerts)")
    pause.add_argument("--lease", default="nodefence/nodefence-leader", help=lease_help)
    pause.add_argument("--kubeconfig", help=kubeconfig_help)
    resume = sub.add_parser("resume", help="end a pause: dead nodes are fenced again")
    resume.add_argument("--lease", default="nodefence/nodefence-leader", help=lease_help)
    resume.add_argument("--kubeconfig", help=kubeconfig_help)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="bash: `source <(nodefence completion bash)`, or save it as "
        "/etc/bash_completion.d/nodefence.",
    )
    completion.add_argument("shell", choices=["bash"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    try:
        code = _dispatch(build_parser().parse_args(argv))
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except KeyboardInterrupt:
        # Commands that can say more (fence: what was sent) catch it themselves.
        print("\nnodefence: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`nodefence status | head`): not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "fence":
        from agent.cli_fence import run_fence

        return run_fence(args)
    if args.command in ("agent", "fencer", "status"):
        from agent.cli_agent import run_agent_command, run_fencer_command, run_status

        if args.command == "agent":
            return run_agent_command(args)
        return run_fencer_command(args) if args.command == "fencer" else run_status(args)
    if args.command == "bmc":
        from agent.cli_bmc_check import run_bmc_check

        return run_bmc_check(args)
    if args.command == "explain":
        from agent.cli_explain import run_explain

        return run_explain(args)
    if args.command in ("migrate", "maintenance"):
        from agent.cli_maintenance import run_maintenance, run_migrate

        return run_migrate(args) if args.command == "migrate" else run_maintenance(args)
    if args.command == "history":
        from agent.cli_history import run_history

        return run_history(args)
    if args.command in ("pause", "resume"):
        from agent.cli_pause import run_pause

        return run_pause(args)
    if args.command == "completion":
        from agent.cli_completion import bash_completion

        print(bash_completion(build_parser()))
        return EXIT_OK
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
