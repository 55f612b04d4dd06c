"""What the maintenance commands share: the reporter, their errors and outcome, and creating an
Evict operation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nodefence.agent.kube.client import ClusterApi, Conflict
from nodefence.agent.maintenance.vm_migration import OpRef, VmRef, vmop_body, vmop_name

Clock = Callable[[], float]


class Reporter(Protocol):
    """Where a command's progress goes (a terminal, a log, a scenario's timeline)."""

    def line(self, text: str) -> None:
        """A line that stays."""

    def step(self, text: str) -> None:
        """A state the next one replaces: in place on a terminal, a line of its own elsewhere."""

    def status(self, text: str) -> None:
        """A running summary: in place on a terminal, left out elsewhere."""


class VmopsError(Exception):
    """The command cannot go on; what it already changed is said in the message."""


class UnknownObject(VmopsError):
    """A node or VM named on the command line does not exist (nothing was changed)."""


@dataclass(frozen=True)
class Outcome:
    """How a command ended: success and the closing lines."""

    ok: bool
    lines: tuple[str, ...]


async def create_evict(
    api: ClusterApi, vm: VmRef, unix_time: float, node: str = "", force: bool | None = None
) -> OpRef:
    """Create an Evict operation named as the seed does; a taken name gets a suffix. A refusal
    (the admission webhook's, say) raises ClusterError with the server's words."""
    for attempt in range(5):
        name = vmop_name(vm.name, unix_time, attempt)
        try:
            await api.create_vm_operation(
                vm.namespace, vmop_body(vm.namespace, vm.name, name, node, force)
            )
        except Conflict:
            continue  # the name is taken: the next attempt's
        return OpRef(vm.namespace, name, vm.name, "")
    raise VmopsError(f"cannot name an operation for {vm.key}: migrate-{vm.name}-* kept conflicting")
