"""`nodefence` command line: the entry point and its sub-commands.

Each sub-command's module owns its arguments (`add_*_arguments`) and its handler (`run_*`);
`COMMANDS` names them, with the one line `nodefence --help` shows. Only the chosen command's
module is imported, to keep start-up lean (a manual fence pays for the drivers it uses and
nothing else; `status` loads no Kubernetes client). Inside an agent pod the config and the
inventory are where the DaemonSet mounts them: `--config` and `--inventory` default to those
paths (or `$NODEFENCE_CONFIG`, `$NODEFENCE_INVENTORY`). Output into a closed pipe (`status |
head`) ends quietly; Ctrl-C ends a command with one line, never a traceback (exit 130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nodefence.agent import __version__
from nodefence.agent.cli.exit_codes import EXIT_INTERRUPTED, EXIT_OK


@dataclass(frozen=True)
class Command:
    """A sub-command: the module that owns it, its arguments and handler there, its help."""

    module: str
    add: str  # add_<command>_arguments(parser)
    run: str  # run_<command>(args) -> exit code
    help: str


COMMANDS = {
    "fence": Command(
        "nodefence.agent.cli.fence",
        "add_fence_arguments",
        "run_fence",
        "power-fence a node by hand through its BMCs and prove the result",
    ),
    "agent": Command(
        "nodefence.agent.cli.agent",
        "add_agent_arguments",
        "run_agent_command",
        "run the per-node agent: heartbeats, health endpoint, probe answers, watchdog",
    ),
    "fencer": Command(
        "nodefence.agent.cli.agent",
        "add_fencer_arguments",
        "run_fencer_command",
        "run a fencer: leader candidate that judges, fences and recovers",
    ),
    "status": Command(
        "nodefence.agent.cli.agent",
        "add_status_arguments",
        "run_status",
        "the leader's view: nodes, fencing, pause, BMC and inventory health; exit 1 when"
        " someone must act",
    ),
    "bmc": Command(
        "nodefence.agent.cli.bmc_check", "add_bmc_arguments", "run_bmc_check", "BMC inventory tools"
    ),
    "explain": Command(
        "nodefence.agent.cli.explain",
        "add_explain_arguments",
        "run_explain",
        "why a node was powered off: its fencing operation's evidence, step by step",
    ),
    "migrate": Command(
        "nodefence.agent.cli.maintenance",
        "add_migrate_arguments",
        "run_migrate",
        "live-migrate a running VM to another node (VirtualMachineOperation Evict, or "
        "a KubeVirt VirtualMachineInstanceMigration)",
    ),
    "maintenance": Command(
        "nodefence.agent.cli.maintenance",
        "add_maintenance_arguments",
        "run_maintenance",
        "take a node out of service on purpose: move its VMs, never fence it",
    ),
    "history": Command(
        "nodefence.agent.cli.history",
        "add_history_arguments",
        "run_history",
        "every fence, automatic and manual, from the FenceOperation records",
    ),
    "pause": Command(
        "nodefence.agent.cli.pause",
        "add_pause_arguments",
        "run_pause",
        "stop all fencing cluster-wide: nodes are still judged and alerted on",
    ),
    "resume": Command(
        "nodefence.agent.cli.pause",
        "add_resume_arguments",
        "run_pause",
        "end a pause: dead nodes are fenced again",
    ),
    "completion": Command(
        "nodefence.agent.cli.completion",
        "add_completion_arguments",
        "run_completion",
        "print a shell completion script",
    ),
}


class _VersionAction(argparse.Action):
    """`--version`: version, commit, build date, Python and library versions."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from nodefence.agent.observe.build_info_files import describe

        print(describe())
        parser.exit()


def _part(command: Command, name: str) -> Callable[..., object]:
    handler: Callable[..., object] = getattr(importlib.import_module(command.module), name)
    return handler


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (no secrets ever appear in it): every sub-command's arguments, or
    with `only`, that command's alone ("": none; every command is listed with its help line)."""
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
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help)
        if only is None or only == name:
            _part(command, command.add)(child)
    return parser


def chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is no option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(chosen(words) or "").parse_args(words)
        command = COMMANDS[args.command]
        if args.command == "completion":
            code = _part(command, command.run)(args, build_parser())
        else:
            code = _part(command, command.run)(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        assert isinstance(code, int)
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


if __name__ == "__main__":
    sys.exit(main())
