"""A Deckhouse live migration's vocabulary and bookkeeping, for
`nodefence.hwsim.virtualization.migrations`.

The `Completed` condition reasons and messages the real controller writes, the migration limits
(`MigrationLimits`), where an accepted migration is (`Stage`, `Migration`), and what the
migration controller needs of the VM controller it runs in (`MigrationHost`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]
Key = tuple[str, str]
EVICT_TYPES = ("Evict", "Migrate")
FINAL_OP_PHASES = ("Completed", "Failed", "Terminating", "Superseded")
DIRTY_ANNOTATION = "hwsim.nodefence.io/dirty-memory"

# `Completed` condition reasons, as the real controller sets them
NOT_FOUND = "VirtualMachineNotFound"
NOT_APPLICABLE_PHASE = "NotApplicableForVirtualMachinePhase"
NOT_APPLICABLE_POLICY = "NotApplicableForLiveMigrationPolicy"
NOT_READY_TO_EXECUTE = "NotReadyToBeExecuted"
MIGRATION_PENDING = "MigrationPending"
TARGET_UNSCHEDULABLE = "TargetUnschedulable"
TARGET_PREPARING = "TargetPreparing"
SYNCING = "Syncing"
NOT_CONVERGING = "NotConverging"
ABORTED = "Aborted"
OPERATION_FAILED = "OperationFailed"
MIGRATION_COMPLETED = "Completed"

QUEUED_MESSAGE = (
    "The VirtualMachineOperation for migrating the virtual machine has been queued. Waiting for "
    "the queue to be processed and for this operation to be executed."
)
CLUSTER_LIMIT = "Waiting for a free migration slot: the cluster live migration limit is reached."
OUTBOUND_LIMIT = 'Waiting for a free outbound migration slot on source node "{}".'
INBOUND_LIMIT = 'Waiting for a free inbound migration slot on target node "{}".'
PREPARING_MESSAGE = "Preparing the migration target"
SYNCING_MESSAGE = "Source and target are being synchronized"
NOT_CONVERGING_MESSAGE = (
    "Migration is not converging: data remaining is not decreasing at maximum throttle"
)


class MigrationHost(Protocol):
    """What the migration controller needs of the VM controller it runs in."""

    store: ObjectStore
    migration_delay: float

    def powered(self, node: str) -> bool:
        """The node's machine has power."""

    def stamp(self) -> str:
        """Now, as an API timestamp."""

    def spend(self) -> bool:
        """Take one action from this tick's budget (False: none left)."""

    def launcher_pods(self, key: Key) -> list[tuple[str, str]]:
        """(pod, node) of every launcher pod of the VM."""

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (gone already is fine)."""

    def runs_on(self, key: Key, node: str) -> bool:
        """The VM's processes really run on `node` now."""

    def moved(self, key: Key, source: str, target: str) -> None:
        """The VM's processes moved from `source` to `target` (never copied)."""


@dataclass(frozen=True)
class MigrationLimits:
    """How many migrations may run at once (KubeVirt's and the controller's defaults)."""

    per_cluster: int = 5
    outbound_per_node: int = 2
    inbound_per_node: int = 1


class Stage(enum.Enum):
    """Where an accepted migration is."""

    QUEUED = 0
    SCHEDULING = 1
    WAITING_INBOUND = 2
    PREPARING = 3
    SYNCING = 4


@dataclass
class Migration:
    """One accepted operation's migration."""

    op: Key
    vm: Key
    source: str
    source_pod: str
    auto_converge: bool
    stage: Stage
    since: float  # when the current stage (or reason) began
    target: str = ""
    target_uid: str = ""
    target_pod: str = ""
    synced: float = 0.0  # of the memory, 0..1
    last: float = 0.0
    progress_at: float = 0.0
    shown: tuple[str, str, str, str] = ("", "", "", "")  # (phase, reason, message, progress)

    @property
    def running(self) -> bool:
        """Past the queue: it holds a cluster and an outbound slot."""
        return self.stage is not Stage.QUEUED


def mapping_of(value: Any) -> Obj:
    """`value` if it is a mapping, else {} (objects in the store follow no schema)."""
    return value if isinstance(value, dict) else {}


def key_of(obj: Obj) -> Key:
    """(namespace, name) of an object."""
    meta = obj["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))


def node_ready(node: Obj) -> bool:
    """The Node's Ready condition is True."""
    conditions = mapping_of(node.get("status")).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
