"""A fencing operation as the pure machine (`nodefence.agent.fencing.machine`) folds it: the
`Operation` record, its `Phase`, the node `Cleanup` it asks for, and the `Action` vocabulary
`next_action` answers in.

Frozen data only; the executor stores it (`nodefence.agent.fencing.records`) and a successor leader
resumes it.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, fields

from nodefence.agent.fencing.events import VmOutcome

RESTART_POLICIES = frozenset({"AlwaysOn", "AlwaysOnUnlessStoppedManually"})


class Cleanup(enum.StrEnum):
    """What happens to the Node once Off is proven (`fencing.cleanup`)."""

    DELETE = "delete"  # taint out-of-service, release pods and volumes, delete the Node
    TAINT = "taint"  # taint out-of-service, release pods and volumes, keep the Node


class Phase(enum.StrEnum):
    """Where a fencing operation stands (also the record's `status.phase`)."""

    PENDING = "Pending"
    FENCING = "Fencing"
    FENCE_FAILED = "FenceFailed"
    POWERED_OFF = "PoweredOff"
    CLEANED = "Cleaned"  # never entered; a stored record in it resumes as Recovering
    RECOVERING = "Recovering"
    RECOVERED = "Recovered"
    RECOVERY_INCOMPLETE = "RecoveryIncomplete"
    RETURNING = "Returning"  # cleanup taint + reboot: VMs judged, waiting for the node to return
    ABORTED = "Aborted"
    MANUAL = "Manual"  # `nodefence fence` by hand: recorded for the history, never resumed


FINAL = frozenset({Phase.RECOVERED, Phase.RECOVERY_INCOMPLETE, Phase.ABORTED, Phase.MANUAL})


class Action(enum.StrEnum):
    """What the executor does next."""

    POWER_OFF = "power-off"  # walk the topology until Off is proven (guarded, idempotent)
    WAIT_RETRY = "wait-retry"  # FenceFailed: wait until `retry_at`
    SNAPSHOT_VMS = "snapshot-vms"  # record the VMs on the node before it is deleted
    TAINT = "taint"  # node.kubernetes.io/out-of-service=nodeshutdown:NoExecute (guarded)
    RELEASE_PODS = "release-pods"  # force-delete every pod bound to the node (guarded)
    RELEASE_ATTACHMENTS = "release-attachments"  # delete its VolumeAttachments (guarded)
    DELETE_NODE = "delete-node"  # (guarded)
    POWER_ON = "power-on"  # after_proof reboot: only once the deletion is stored (guarded)
    CHECK_VMS = "check-vms"  # are the restartable VMs Running elsewhere?
    AWAIT_RETURN = "await-return"  # cleanup taint + reboot: Ready and heartbeating again?
    UNTAINT = "untaint"  # remove the out-of-service taint of a node that came back (guarded)
    NONE = "none"  # final


@dataclass(frozen=True, init=False)
class Operation:
    """One fencing operation: everything a successor leader needs to resume it."""

    node: str
    id: str
    phase: Phase = Phase.PENDING
    power_off_sent: bool = False
    off_proven: bool = False
    level: int | None = None
    attempts: int = 0
    retry_at: float | None = None
    tainted: bool = False
    node_deleted: bool = False
    deleted_at: float | None = None
    recovery_deadline: float | None = None
    vms: tuple[VmOutcome, ...] | None = None
    errors: tuple[str, ...] = ()
    reason: str = ""
    capacity_warning: str = ""
    proof: str = ""  # "read-back" (the BMC read Off) or "watchdog" (self-fence deadline)
    node_uid: str = ""  # the Node object decided dead: taint and delete only that one
    reboot: bool = False  # after_proof reboot: power on once the Node deletion is stored
    powered_on: bool | None = None  # reboot: None not tried yet, else whether it worked
    proven_at: float | None = None  # when this process saw the proof (monotonic; not stored)
    cleanup: Cleanup = Cleanup.DELETE
    release: bool = True  # force-delete the node's pods and remove its VolumeAttachments
    pods_released: bool = False
    pods_deleted: int = 0
    attachments_released: bool = False
    attachments_removed: int = 0
    release_deadline: float | None = None  # VolumeAttachments still there then: go on anyway
    released_at: float | None = None  # cleanup taint: released, the recovery clock started
    powered_on_at: float | None = None
    verdict: Phase | None = None  # Returning: the VMs' verdict, final once the node returned
    returned: bool = False  # Returning: the node is Ready and heartbeats again
    untainted: bool = False
    return_deadline: float | None = None
    # The node's last heartbeat the deciding leader heard (monotonic, this process; rebuilt
    # from the record's lastHeartbeatAt): each VM's outage is counted from it.
    last_heartbeat: float | None = None

    def __init__(
        self,
        node: str,
        id: str,
        phase: Phase = Phase.PENDING,
        power_off_sent: bool = False,
        off_proven: bool = False,
        level: int | None = None,
        attempts: int = 0,
        retry_at: float | None = None,
        tainted: bool = False,
        node_deleted: bool = False,
        deleted_at: float | None = None,
        recovery_deadline: float | None = None,
        vms: tuple[VmOutcome, ...] | None = None,
        errors: tuple[str, ...] = (),
        reason: str = "",
        capacity_warning: str = "",
        proof: str = "",
        node_uid: str = "",
        reboot: bool = False,
        powered_on: bool | None = None,
        proven_at: float | None = None,
        cleanup: Cleanup = Cleanup.DELETE,
        release: bool = True,
        pods_released: bool = False,
        pods_deleted: int = 0,
        attachments_released: bool = False,
        attachments_removed: int = 0,
        release_deadline: float | None = None,
        released_at: float | None = None,
        powered_on_at: float | None = None,
        verdict: Phase | None = None,
        returned: bool = False,
        untainted: bool = False,
        return_deadline: float | None = None,
        last_heartbeat: float | None = None,
    ) -> None:
        # Built at every step of an operation (`dataclasses.replace`): filling the dict
        # directly costs a third of the generated frozen `__init__` (one
        # `object.__setattr__` per field).
        d = self.__dict__
        d["node"] = node
        d["id"] = id
        d["phase"] = phase
        d["power_off_sent"] = power_off_sent
        d["off_proven"] = off_proven
        d["level"] = level
        d["attempts"] = attempts
        d["retry_at"] = retry_at
        d["tainted"] = tainted
        d["node_deleted"] = node_deleted
        d["deleted_at"] = deleted_at
        d["recovery_deadline"] = recovery_deadline
        d["vms"] = vms
        d["errors"] = errors
        d["reason"] = reason
        d["capacity_warning"] = capacity_warning
        d["proof"] = proof
        d["node_uid"] = node_uid
        d["reboot"] = reboot
        d["powered_on"] = powered_on
        d["proven_at"] = proven_at
        d["cleanup"] = cleanup
        d["release"] = release
        d["pods_released"] = pods_released
        d["pods_deleted"] = pods_deleted
        d["attachments_released"] = attachments_released
        d["attachments_removed"] = attachments_removed
        d["release_deadline"] = release_deadline
        d["released_at"] = released_at
        d["powered_on_at"] = powered_on_at
        d["verdict"] = verdict
        d["returned"] = returned
        d["untainted"] = untainted
        d["return_deadline"] = return_deadline
        d["last_heartbeat"] = last_heartbeat

    @property
    def final(self) -> bool:
        """True once nothing more will happen."""
        return self.phase in FINAL

    @property
    def released(self) -> bool:
        """Tainted, and (with `release`) its pods and VolumeAttachments released."""
        done = not self.release or (self.pods_released and self.attachments_released)
        return self.tainted and done

    @property
    def vms_let_go(self) -> bool:
        """Its VMs may start elsewhere now: its pods were released or its Node deleted (past
        this, a machine running again no longer voids the proof: its VMs died with the Off)."""
        return self.node_deleted or self.pods_released or self.released_at is not None

    @property
    def recovery_start(self) -> float | None:
        """When the recovery clock started: the Node deleted (cleanup delete) or released
        (cleanup taint); None before."""
        return self.deleted_at if self.cleanup is Cleanup.DELETE else self.released_at


def _init_takes_every_field() -> bool:
    # The hand-written `Operation.__init__` must follow its fields (names, order, defaults):
    # checked once at import, so a field added without its parameter fails loudly.
    declared = fields(Operation)
    code = Operation.__init__.__code__
    defaults = [f.default for f in declared if f.default is not MISSING]
    names = [f.name for f in declared]
    return (
        list(code.co_varnames[1 : code.co_argcount]) == names
        and list(Operation.__init__.__defaults__ or ()) == defaults
        and list(vars(Operation("", ""))) == names
    )


if not _init_takes_every_field():
    raise TypeError("Operation.__init__ must take every field of Operation, in order, as declared")
