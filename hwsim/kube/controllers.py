"""The kube-controller-manager loops a simulated cluster runs, with their timers in one place.

`ControllerTimers` holds the upstream defaults (PodGC's 40 s quarantine and 20 s period, the
attach/detach controller's 6-minute maxWaitForUnmountDuration and 60 s sync, the 300 s
not-ready/unreachable toleration pods get at admission). Scenarios and tests may compress them
(`compressed(factor)`), and must say so: `describe()` is the line they print.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from nodefence.hwsim.kube.attachdetach import AttachDetachController
from nodefence.hwsim.kube.podgc import PodGC, TaintEvictionController
from nodefence.hwsim.kube.store import ObjectStore

UPSTREAM_NOTE = "upstream defaults"


@dataclass(frozen=True)
class ControllerTimers:
    """Seconds; each field names the upstream setting it stands for."""

    podgc_quarantine: float = 40.0  # PodGC quarantineTime (not configurable upstream)
    podgc_period: float = 20.0  # PodGC gcCheckPeriod
    max_wait_for_unmount: float = 360.0  # attach/detach maxWaitForUnmountDuration
    attach_detach_sync: float = 60.0  # --attach-detach-reconcile-sync-period
    toleration_seconds: float = 300.0  # --default-(not-ready|unreachable)-toleration-seconds
    attach_detach_loop: float = 0.1  # the reconciler's loop period (upstream 100 ms)
    taint_eviction_period: float = 0.5  # how often the emulated taint manager looks

    def compressed(self, factor: float) -> ControllerTimers:
        """Every upstream timer divided by `factor` (the loop periods are kept)."""
        return replace(
            self,
            podgc_quarantine=self.podgc_quarantine / factor,
            podgc_period=self.podgc_period / factor,
            max_wait_for_unmount=self.max_wait_for_unmount / factor,
            attach_detach_sync=self.attach_detach_sync / factor,
            toleration_seconds=self.toleration_seconds / factor,
        )

    def describe(self) -> str:
        """`upstream defaults`, or each timer that differs: `PodGC quarantine 40 s -> 4 s, ...`."""
        names = {
            "podgc_quarantine": "PodGC quarantine",
            "podgc_period": "PodGC period",
            "max_wait_for_unmount": "maxWaitForUnmountDuration",
            "attach_detach_sync": "attach/detach sync",
            "toleration_seconds": "not-ready/unreachable toleration",
        }
        default = ControllerTimers()
        changed = [
            f"{names[f.name]} {getattr(default, f.name):g} s -> {getattr(self, f.name):.3g} s"
            for f in fields(self)
            if f.name in names and getattr(self, f.name) != getattr(default, f.name)
        ]
        return "compressed: " + ", ".join(changed) if changed else UPSTREAM_NOTE


class ControllerManager:
    """PodGC, the taint eviction controller and the attach/detach controller over one store,
    each in its own thread (the node lifecycle controller is started apart)."""

    def __init__(self, store: ObjectStore, timers: ControllerTimers | None = None) -> None:
        self.timers = timers or ControllerTimers()
        t = self.timers
        store.default_toleration_seconds = t.toleration_seconds
        self.podgc = PodGC(store, quarantine=t.podgc_quarantine, period=t.podgc_period)
        self.taint_eviction = TaintEvictionController(store, period=t.taint_eviction_period)
        self.attach_detach = AttachDetachController(
            store,
            max_wait_for_unmount=t.max_wait_for_unmount,
            sync_period=t.attach_detach_sync,
            loop_period=t.attach_detach_loop,
        )

    def start_in_thread(self) -> None:
        """Start every controller in its thread."""
        self.attach_detach.start_in_thread()
        self.taint_eviction.start_in_thread()
        self.podgc.start_in_thread()

    def stop_thread(self) -> None:
        """Stop them all (idempotent)."""
        self.podgc.stop_thread()
        self.taint_eviction.stop_thread()
        self.attach_detach.stop_thread()
