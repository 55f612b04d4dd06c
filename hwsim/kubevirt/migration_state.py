"""A KubeVirt live migration's bookkeeping, for `nodefence.hwsim.kubevirt.migrations`: the limits,
the VirtualMachineInstanceMigration phases still unfinished, where an accepted migration is
(`Stage`) and what is known of it (`Migration`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]
PER_CLUSTER, OUTBOUND_PER_NODE = 5, 2
EVACUATION_ANNOTATION = "kubevirt.io/evacuationMigration"
UNFINISHED = ("", "Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")


class Stage(enum.Enum):
    """Where an accepted migration is."""

    QUEUED = 0
    SCHEDULING = 1
    SCHEDULED = 2
    PREPARING = 3
    TARGET_READY = 4
    RUNNING = 5


@dataclass
class Migration:
    """One accepted migration."""

    op: Key
    uid: str
    vmi: Key
    source: str
    source_pod: str
    stage: Stage
    since: float
    target: str = ""
    target_uid: str = ""  # the target Node's uid
    target_pod: str = ""
    synced: float = 0.0
    last: float = 0.0
    progress_at: float = 0.0
