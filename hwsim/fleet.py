"""A named set of simulated machines, shared by every emulator in one process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from nodefence.hwsim.machine import SimMachine


class Fleet:
    """Machines by name; `Fleet.of_size(3)` gives node-1..node-3, all powered on."""

    def __init__(self, machines: list[SimMachine] | None = None) -> None:
        self._machines: dict[str, SimMachine] = {}
        for m in machines or []:
            self.add(m)

    @classmethod
    def of_size(cls, count: int, prefix: str = "node-") -> Fleet:
        """`count` machines named `{prefix}1`..; UUIDs are stable for a given name."""
        names = [f"{prefix}{i}" for i in range(1, count + 1)]
        return cls(
            [SimMachine(n, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{n}.hwsim"))) for n in names]
        )

    def add(self, machine: SimMachine) -> None:
        """Add a machine; names are unique."""
        if machine.name in self._machines:
            raise ValueError(f"machine {machine.name!r} already in the fleet")
        self._machines[machine.name] = machine

    def __getitem__(self, name: str) -> SimMachine:
        return self._machines[name]

    def __iter__(self) -> Iterator[SimMachine]:
        return iter(self._machines.values())

    def __len__(self) -> int:
        return len(self._machines)

    def names(self) -> list[str]:
        """Machine names in insertion order."""
        return list(self._machines)
