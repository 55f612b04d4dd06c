"""Where VMs really run: the hypervisor processes, apart from what the API says.

A VM's processes die at once when its node's machine loses power, and keep running on a node
that is only cut off; a VM started on a second node while they still run on the first is a
split brain, recorded. Used by the KubeVirt controller (`nodefence.hwsim.kubevirt.controller`); the
Deckhouse controller (`nodefence.hwsim.virtualization.coldstandby`) keeps the same truth its own
way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.virtualization.coldstandby_records import SplitBrain

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ProcessTruth:
    """`actual`: VM -> the nodes its processes run on; `split_brains`: every double run seen."""

    def __init__(
        self,
        is_powered: Callable[[str], bool],
        clock: Callable[[], float],
        wall: Callable[[], datetime],
        label: str = "vm",
    ) -> None:
        self.is_powered = is_powered
        self.clock = clock
        self.wall = wall
        self.label = label  # how log lines name a VM of this kind
        self.actual: dict[Key, set[str]] = {}
        self.split_brains: list[SplitBrain] = []

    def powered(self, node: str) -> bool:
        """The node's machine has power (a node the callable does not know has none)."""
        try:
            return bool(self.is_powered(node))
        except (KeyError, ValueError, TypeError):
            return False

    def reap(self, key: Key) -> None:
        """Forget the processes of `key` on machines without power."""
        places = self.actual.get(key) or set()
        for node in [n for n in places if not self.powered(n)]:
            places.discard(node)
            log.info("%s %s/%s: its processes on %s died with the power", self.label, *key, node)

    def add(self, key: Key, node: str) -> None:
        """The VM's processes start on `node` (if powered): a second node is a split brain."""
        if not self.powered(node):
            log.warning(
                "%s %s/%s: node %s has no power: nothing runs there", self.label, *key, node
            )
            return
        self.reap(key)
        places = self.actual.setdefault(key, set())
        if places and node not in places:
            nodes = tuple(sorted(places | {node}))
            brain = SplitBrain(*key, nodes, self.clock(), timestamp(self.wall()))
            self.split_brains.append(brain)
            log.error("SPLIT BRAIN: %s", brain)
        places.add(node)

    def stop(self, key: Key, node: str) -> None:
        """The VM's processes on `node` ended (a clean shutdown there)."""
        self.actual.get(key, set()).discard(node)

    def move(self, key: Key, source: str, target: str) -> None:
        """A live migration moved the processes (never copied)."""
        self.stop(key, source)
        self.add(key, target)

    def places(self, key: Key) -> set[str]:
        """Where the VM's processes run now."""
        self.reap(key)
        return set(self.actual.get(key, ()))

    def runs_on(self, key: Key, node: str) -> bool:
        """The VM's processes run on `node` now."""
        return node in self.places(key)

    def violations(self) -> list[str]:
        """Every double run ever seen, oldest first."""
        return [str(s) for s in self.split_brains]

    def keep_only(self, keys: Iterable[Key]) -> None:
        """Forget VMs that no longer exist (their processes went with them)."""
        keep = set(keys)
        for key in [k for k in self.actual if k not in keep]:
            del self.actual[key]
