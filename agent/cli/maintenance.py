"""`nodefence migrate` and `nodefence maintenance enter|exit|list`.

They need only the Kubernetes API (no agent config): `--kubeconfig`, else `$KUBECONFIG`, else
`~/.kube/config`, else the in-cluster service account (`nodefence.agent.cli.kube_access`). Exit
codes: 0 done, 1 failed (a VM could not move, a timeout, an API error), 2 a usage error (an unknown
node or VM: nothing was changed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TextIO, TypeVar

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.kube_access import kube_api
from nodefence.agent.cli.options import LEASE_HELP, VIRT_HELP, kubeconfig_option
from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.agent.maintenance.mode import NodeRow
from nodefence.agent.virt.layer_client import VirtLayer
from nodefence.agent.virt.names import AUTO, MODES

T = TypeVar("T")
EXIT_INTERRUPTED = 130


class TerminalProgress:
    """A `vmops.Reporter` on a stream: `step` and `status` redraw one line in place on a
    terminal; elsewhere (a pipe, a log) a step is a line of its own and a status is left out."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._drawn = ""  # the in-place line now on screen
        self._is_step = False

    def _draw(self, text: str) -> None:
        self.out.write("\r\x1b[K" + text)
        self.out.flush()
        self._drawn = text

    def line(self, text: str) -> None:
        """A line that stays (a status line is redrawn below it)."""
        if not self.tty or not self._drawn:
            print(text, file=self.out, flush=True)
            return
        if self._is_step:  # keep the last state on screen, then the line
            self.out.write("\n")
            self._drawn = ""
            print(text, file=self.out, flush=True)
            return
        status = self._drawn
        self.out.write("\r\x1b[K")
        print(text, file=self.out, flush=True)
        self._draw(status)

    def step(self, text: str) -> None:
        """A state that replaces the previous one."""
        if not self.tty:
            print(text, file=self.out, flush=True)
            return
        self._is_step = True
        self._draw(text)

    def status(self, text: str) -> None:
        """A running summary (terminals only)."""
        if self.tty:
            self._is_step = False
            self._draw(text)

    def close(self) -> None:
        """End the in-place line: a step stays, a status goes."""
        if self.tty and self._drawn:
            self.out.write("\n" if self._is_step else "\r\x1b[K")
            self.out.flush()
        self._drawn = ""


def _bad_numbers(args: argparse.Namespace, err: TextIO) -> bool:
    """Say so when --timeout or --parallel is out of range (True: refuse to run)."""
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not timeout > 0:
        print(f"nodefence: --timeout must be more than 0 seconds, got {timeout:g}", file=err)
        return True
    parallel = getattr(args, "parallel", None)
    if parallel is not None and not 1 <= parallel <= 50:
        print(f"nodefence: --parallel must be 1 to 50, got {parallel}", file=err)
        return True
    return False


def _virt(api: ClusterApi, args: argparse.Namespace) -> VirtLayer:
    """The VM APIs a command works on (`--virtualization`; exit has none: no VM moves)."""
    return VirtLayer(api, getattr(args, "virtualization", AUTO), maintenance=True)


def _run(
    work: Callable[[ClusterApi, TerminalProgress], Coroutine[Any, Any, T]],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    interrupted: str,
) -> tuple[int, T | None]:
    """Run `work` with an API client and a reporter; (exit code, result), the code set only
    when the work did not finish."""
    from nodefence.agent.maintenance.vmops_executor import UnknownObject, VmopsError

    if _bad_numbers(args, err):
        return EXIT_USAGE, None
    api = kube_api(args.kubeconfig, err)
    if api is None:
        return EXIT_USAGE, None
    progress = TerminalProgress(out)
    try:
        return EXIT_OK, asyncio.run(work(api, progress))
    except UnknownObject as e:
        print(f"nodefence: {e}", file=err)
        return EXIT_USAGE, None
    except (VmopsError, ClusterError) as e:
        print(f"nodefence: {e}", file=err)
        return EXIT_FAILED, None
    except KeyboardInterrupt:
        print(f"nodefence: interrupted; {interrupted}", file=err)
        return EXIT_INTERRUPTED, None
    finally:
        progress.close()


def run_migrate(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence migrate VM`."""
    from nodefence.agent.maintenance.vmops_executor import migrate_vm

    code, outcome = _run(
        lambda api, progress: migrate_vm(
            api,
            args.namespace,
            args.vm,
            wait=args.wait,
            timeout=args.timeout,
            reporter=progress,
            force=args.force,
            virt=_virt(api, args),
        ),
        args,
        out,
        err,
        "an operation already created goes on (`kubectl get vmop` or `vmim` shows it)",
    )
    if outcome is None:
        return code
    for line in outcome.lines:
        print(line, file=out if outcome.ok else err)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def run_maintenance(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence maintenance enter|exit|list`."""
    from nodefence.agent.maintenance.vmops_executor import (
        Outcome,
        enter_maintenance,
        exit_maintenance,
        list_maintenance,
    )

    if args.maintenance_command == "list":
        code, rows = _run(
            lambda api, _: list_maintenance(api, args.all, _virt(api, args)),
            args,
            out,
            err,
            "nothing changed",
        )
        if rows is None:
            return code
        _print_rows(rows, out)
        return EXIT_OK
    if args.maintenance_command == "enter":
        node = args.node
        namespace, _, lease_name = str(args.lease).partition("/")
        if not namespace or not lease_name:
            print(f"nodefence: --lease must be NAMESPACE/NAME, got {args.lease!r}", file=err)
            return EXIT_USAGE

        def work(api: ClusterApi, progress: TerminalProgress) -> Coroutine[Any, Any, Outcome]:
            return enter_maintenance(
                api,
                node,
                timeout=args.timeout,
                reporter=progress,
                vms_only=args.vms_only,
                parallel=args.parallel,
                evict_unmanaged=args.evict_unmanaged,
                force=args.force,
                allow_not_ready=args.allow_not_ready,
                lease=(namespace, lease_name),
                virt=_virt(api, args),
            )

        left = (
            f"{node} may be cordoned and marked draining (still guarded): "
            "`nodefence maintenance list` shows it"
        )
        code, outcome = _run(work, args, out, err, left)
    else:
        code, outcome = _run(
            lambda api, progress: exit_maintenance(
                api, args.node, reporter=progress, force=args.force
            ),
            args,
            out,
            err,
            "run it again",
        )
    if outcome is None:
        return code
    for line in outcome.lines:
        print(line, file=out if outcome.ok else err)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _print_rows(rows: list[NodeRow], out: TextIO) -> None:
    if not rows:
        print("no node is in maintenance", file=out)
        return
    print(f"{'NODE':<20} {'STATE':<22} {'CORDONED':<9} {'READY':<8} VMS", file=out)
    for r in rows:
        ready = {True: "True", False: "False", None: "Unknown"}[r.ready]
        cordoned = "yes" if r.cordoned else "no"
        print(f"{r.node:<20} {r.state.value:<22} {cordoned:<9} {ready:<8} {r.vms}", file=out)


def add_migrate_arguments(migrate: argparse.ArgumentParser) -> None:
    """`nodefence migrate VM`: its arguments."""
    migrate.description = (
        "Create a VirtualMachineOperation of type Evict for the VM (for a KubeVirt VM: a "
        "VirtualMachineInstanceMigration); with --wait follow it (Running -> Migrating -> "
        "Running on another node) and exit 0 only when it moved."
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
    migrate.add_argument("--virtualization", choices=MODES, default=AUTO, help=VIRT_HELP)
    kubeconfig_option(migrate)


def add_maintenance_arguments(maint: argparse.ArgumentParser) -> None:
    """`nodefence maintenance enter|exit|list`: their arguments."""
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
        help=LEASE_HELP,
    )
    enter.add_argument("--virtualization", choices=MODES, default=AUTO, help=VIRT_HELP)
    kubeconfig_option(enter)
    leave = msub.add_parser(
        "exit", help="clear the maintenance mark and undo the cordon `enter` made"
    )
    leave.add_argument("node", help="node name")
    leave.add_argument(
        "--force", action="store_true", help="even when the node is not Ready (it may be fenced)"
    )
    kubeconfig_option(leave)
    show = msub.add_parser("list", help="nodes in maintenance: state, cordon, VMs left")
    show.add_argument("--all", action="store_true", help="every node, not only marked ones")
    show.add_argument("--virtualization", choices=MODES, default=AUTO, help=VIRT_HELP)
    kubeconfig_option(show)
