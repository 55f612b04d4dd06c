"""The vocabulary of a chaos run: fault kinds, the actions that make them, one scheduled step.

`START_KIND` says which kind a start action counts as, `END_ACTION` which action ends its
episode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    """What a chaos run does to the cluster (the counts in the report use these names)."""

    POWER_LOSS = "power-loss"  # machine off at once; its BMC still answers
    PARTITION = "partition"  # network cut: agent runs on alone, kubelet silent, still powered
    BMC_FAULT = "bmc-fault"  # the node's BMC unreachable, slow, refusing logins, ...
    BROKER_RESTART = "broker-restart"  # mosquitto stopped and started on the same port
    LEADER_KILL = "leader-kill"  # SIGKILL of the agent holding the leader Lease
    MAINTENANCE = "maintenance"  # `nodefence maintenance enter`, power cut, power on, exit
    REPAIR = "repair"  # a machine powered back on (end of a power loss, or an orphan)
    AGENT_STOP = "agent-stop"  # SIGTERM of a node's agent (watchdog disarmed), not restarted
    # SIGKILL of the leader when it stores a victim's record, at one phase of the operation:
    LEADER_KILL_PENDING = "leader-kill-pending"  # stored, power-off not sent
    LEADER_KILL_SENT = "leader-kill-sent"  # the PowerOffSending save landed, not proven
    LEADER_KILL_RECOVERING = "leader-kill-recovering"  # the Recovering save landed
    CHANNEL_ERROR = "channel-error"  # one BMC channel answers errors, the other reads the power
    PDU_NODE_DOWN = "pdu-node-down"  # the BMC+PDU node lost (power loss, or cut off + BMC dead)
    RECORD_SAVE_TIMEOUT = "record-save-timeout"  # a record write lands but is never answered
    DOUBLE_FAULT = "double-fault"  # two faults on one node at once


# The kinds of the original schedule (the default settings draw only these).
CLASSIC_KINDS = frozenset(
    {
        FaultKind.POWER_LOSS,
        FaultKind.PARTITION,
        FaultKind.BMC_FAULT,
        FaultKind.BROKER_RESTART,
        FaultKind.LEADER_KILL,
        FaultKind.MAINTENANCE,
    }
)


class Action(StrEnum):
    """One step the runner performs; an episode is a start action, maybe steps in between,
    and an end action."""

    POWER_LOSS = "power-loss"
    REPAIR = "repair"
    PARTITION = "partition"
    HEAL = "heal"  # heal the partition, or power the machine on when it was fenced meanwhile
    BMC_FAULT = "bmc-fault"
    BMC_CLEAR = "bmc-clear"
    BROKER_RESTART = "broker-restart"
    LEADER_KILL = "leader-kill"
    AGENT_RESTART = "agent-restart"
    MAINTENANCE_ENTER = "maintenance-enter"
    MAINTENANCE_EXIT = "maintenance-exit"
    AGENT_STOP = "agent-stop"
    AGENT_START = "agent-start"  # heal, BMC healthy, the stopped agent started again
    LEADER_KILL_PENDING = "leader-kill-pending"  # the victim's fault, and the kill armed
    LEADER_KILL_SENT = "leader-kill-sent"
    LEADER_KILL_RECOVERING = "leader-kill-recovering"
    KILL_DISARM = "kill-disarm"  # end of a phase kill: victim repaired, kill disarmed
    CHANNEL_ERROR = "channel-error"  # after a power loss: the other channel reads Off, truly
    CHANNEL_LIE = "channel-lie"  # on a live victim: the other channel reads Off, falsely
    CHANNEL_CLEAR = "channel-clear"
    PDU_NODE_DOWN = "pdu-node-down"
    PDU_NODE_RESTORE = "pdu-node-restore"
    RECORD_SAVE_TIMEOUT = "record-save-timeout"
    SAVE_DISARM = "save-disarm"
    BMC_PARTITION = "bmc-partition"  # BMC fault + partition on one node (the self-fence path)
    BMC_PARTITION_END = "bmc-partition-end"


# The kind each start action counts as when the runner performs it (end actions count as
# repairs only when they really power a machine on; the runner decides that; a phase kill or
# a save timeout counts when it fires).
START_KIND: dict[Action, FaultKind] = {
    Action.POWER_LOSS: FaultKind.POWER_LOSS,
    Action.PARTITION: FaultKind.PARTITION,
    Action.BMC_FAULT: FaultKind.BMC_FAULT,
    Action.BROKER_RESTART: FaultKind.BROKER_RESTART,
    Action.LEADER_KILL: FaultKind.LEADER_KILL,
    Action.MAINTENANCE_ENTER: FaultKind.MAINTENANCE,
    Action.AGENT_STOP: FaultKind.AGENT_STOP,
    Action.LEADER_KILL_PENDING: FaultKind.LEADER_KILL_PENDING,
    Action.LEADER_KILL_SENT: FaultKind.LEADER_KILL_SENT,
    Action.LEADER_KILL_RECOVERING: FaultKind.LEADER_KILL_RECOVERING,
    Action.CHANNEL_ERROR: FaultKind.CHANNEL_ERROR,
    Action.CHANNEL_LIE: FaultKind.CHANNEL_ERROR,
    Action.PDU_NODE_DOWN: FaultKind.PDU_NODE_DOWN,
    Action.RECORD_SAVE_TIMEOUT: FaultKind.RECORD_SAVE_TIMEOUT,
    Action.BMC_PARTITION: FaultKind.DOUBLE_FAULT,
}
END_ACTION: dict[Action, Action] = {
    Action.POWER_LOSS: Action.REPAIR,
    Action.PARTITION: Action.HEAL,
    Action.BMC_FAULT: Action.BMC_CLEAR,
    Action.LEADER_KILL: Action.AGENT_RESTART,
    Action.MAINTENANCE_ENTER: Action.MAINTENANCE_EXIT,
    Action.AGENT_STOP: Action.AGENT_START,
    Action.LEADER_KILL_PENDING: Action.KILL_DISARM,
    Action.LEADER_KILL_SENT: Action.KILL_DISARM,
    Action.LEADER_KILL_RECOVERING: Action.KILL_DISARM,
    Action.CHANNEL_ERROR: Action.CHANNEL_CLEAR,
    Action.CHANNEL_LIE: Action.CHANNEL_CLEAR,
    Action.PDU_NODE_DOWN: Action.PDU_NODE_RESTORE,
    Action.RECORD_SAVE_TIMEOUT: Action.SAVE_DISARM,
    Action.BMC_PARTITION: Action.BMC_PARTITION_END,
}
PHASE_KILLS = frozenset(
    {Action.LEADER_KILL_PENDING, Action.LEADER_KILL_SENT, Action.LEADER_KILL_RECOVERING}
)

# BMC faults as nodefence.hwsim.machine.Faults fields (each one alone, as a BMC tends to fail).
BMC_FAULTS: tuple[dict[str, Any], ...] = (
    {"unreachable": True},
    {"slow": 0.5},
    {"wrong_credentials": True},
    {"fail_first": 2},
    {"off_delay": 1.0},
)


# Episodes that wait for one exact moment of a fence: no broker restart while they are open.
QUIET = PHASE_KILLS | {Action.RECORD_SAVE_TIMEOUT, Action.AGENT_STOP}


@dataclass(frozen=True)
class Step:
    """One scheduled action: at `at` seconds after the chaos began, on `node` (None: the
    whole cluster, or whoever leads then); `episode` pairs a start with its end."""

    at: float
    action: Action
    node: str | None
    episode: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        doc = asdict(self)
        doc["action"] = self.action.value
        doc["at"] = round(self.at, 3)
        return doc
