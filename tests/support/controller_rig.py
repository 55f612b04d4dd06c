"""The emulated cluster's controllers ticked by hand on a fake clock: nodes whose power and
link a test switches, their kubelets, the attach/detach controller, PodGC and one VM
controller (ColdStandby or KubeVirt), with no thread and no socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from nodefence.hwsim.kube import ObjectStore, SimKubelet
from nodefence.hwsim.kube.attachdetach import AttachDetachController
from nodefence.hwsim.kube.podgc import PodGC
from tests.support.clock import FakeClock


class Ticking(Protocol):
    def tick(self) -> None: ...


C = TypeVar("C", bound=Ticking)


def node_switches(nodes: int) -> tuple[list[str], dict[str, bool], dict[str, bool]]:
    """node-1 .. node-N, each powered and on the network: (names, power, link)."""
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    return names, dict.fromkeys(names, True), dict.fromkeys(names, True)


@dataclass
class ControllerRig(Generic[C]):
    """A store with nodes registered by kubelets, and controller `ctl` on a fake clock."""

    store: ObjectStore
    clock: FakeClock
    ctl: C
    power: dict[str, bool]
    link: dict[str, bool]
    attach: AttachDetachController
    kubelets: dict[str, SimKubelet] = field(default_factory=dict)
    gc: PodGC | None = None  # ticked by `run` when set

    def start_kubelets(self) -> None:
        """A kubelet per node (of `power`), up while its node has power and link; each
        registers its Node now."""
        for name in self.power:
            kubelet = SimKubelet(self.store, name, lambda n=name: self.power[n] and self.link[n])
            kubelet.tick()
            self.kubelets[name] = kubelet

    def step(self) -> None:
        """One look of every controller: attach/detach, PodGC, the VM controller, kubelets."""
        self.attach.tick()
        if self.gc is not None:
            self.gc.tick()
        self.ctl.tick()
        for kubelet in self.kubelets.values():
            kubelet.sync_pods()

    def run(self, seconds: float = 0.0, step: float = 0.1) -> None:
        """Tick now, then every `step` until `seconds` have passed on the fake clock."""
        self.step()
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(end, self.clock.now + step)
            self.step()
