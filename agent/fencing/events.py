"""What the fencing executor reports to the pure machine (`nodefence.agent.fencing.machine.apply`):
one frozen dataclass per event, and the VM outcomes it records. Pure data, re-exported by
`nodefence.agent.fencing.machine`."""

from __future__ import annotations

from dataclasses import dataclass, field

from nodefence.agent.virt.names import Virt, vm_key


@dataclass(frozen=True)
class VmOutcome:
    """One VM that ran on the fenced node and what became of it."""

    namespace: str
    name: str
    run_policy: str
    expected_restart: bool
    running_on: str | None = None
    recovered_after: float | None = None  # seconds from node deletion to Running elsewhere
    virt: Virt = Virt.DECKHOUSE  # its API; `run_policy` is then KubeVirt's runStrategy
    outage: float | None = None  # seconds from the node's last heartbeat to Running elsewhere

    @property
    def key(self) -> str:
        """namespace/name (`kubevirt:namespace/name` for a KubeVirt VM)."""
        return vm_key(self.virt, self.namespace, self.name)


@dataclass(frozen=True)
class NodeAlive:
    """Heartbeats or the kubelet came back (checked right before the power-off request)."""

    evidence: str


@dataclass(frozen=True)
class Maintenance:
    """The node entered maintenance mode."""


@dataclass(frozen=True)
class PowerOffSending:
    """The executor is about to send the first power-off request: the point of no return."""


@dataclass(frozen=True)
class Cancelled:
    """Abort although PowerOffSending may be stored: no power-off went out (or this leader
    never decided the node dead), and the node is alive or in maintenance."""

    reason: str


@dataclass(frozen=True)
class PoweredOnAgain:
    """After a proven Off, before the Node was deleted: the machine runs again (its BMC reads
    On, or the node showed life since the proof)."""

    evidence: str


@dataclass(frozen=True)
class SendWithdrawn:
    """PowerOffSending was stored but the request never went out (the last checks could not
    be made): a failed attempt, retried with backoff, and the point of no return undone."""

    reason: str


@dataclass(frozen=True)
class FenceDone:
    """The topology walk ended: `off_proven` or not, with the errors it met."""

    off_proven: bool
    level: int | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class SelfFenced:
    """The node's BMC cannot be reached and its watchdog deadline has provably passed."""

    evidence: str


@dataclass(frozen=True)
class VmsSnapshotted:
    """The VMs that ran on the node, and a capacity warning ("" when there is room)."""

    vms: tuple[VmOutcome, ...]
    capacity_warning: str = ""


@dataclass(frozen=True)
class Tainted:
    """The out-of-service taint is on the Node (or the Node is already gone)."""


@dataclass(frozen=True)
class PodsReleased:
    """Every pod bound to the node was force-deleted (`deleted` of them by this call)."""

    deleted: int


@dataclass(frozen=True)
class AttachmentsReleased:
    """The node's VolumeAttachments were deleted (`removed` by this call); `remaining` names
    what is still attached (objects waiting for their finalizer, `volumesAttached`)."""

    removed: int
    remaining: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeDeleted:
    """The Node object is gone."""


@dataclass(frozen=True)
class PoweredOn:
    """after_proof reboot: the power-on after the deletion was tried (`ok`, or the error)."""

    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ReturnChecked:
    """Returning: whether the node is back (Ready, its agent heartbeating), with the evidence."""

    back: bool
    evidence: str = ""


@dataclass(frozen=True)
class Untainted:
    """The out-of-service taint of a node that came back was removed."""


@dataclass(frozen=True)
class VmsSeen:
    """Where each snapshotted VM runs now: key -> node name, or None when not Running."""

    running: dict[str, str | None] = field(default_factory=dict)


Event = (
    NodeAlive
    | Maintenance
    | PowerOffSending
    | FenceDone
    | SelfFenced
    | VmsSnapshotted
    | Tainted
    | NodeDeleted
    | PoweredOn
    | VmsSeen
    | Cancelled
    | SendWithdrawn
    | PoweredOnAgain
    | PodsReleased
    | AttachmentsReleased
    | ReturnChecked
    | Untainted
)
