"""What a sprung record trap does in a chaos run (`nodefence.hwsim.chaos.traps` says when one
springs).

A record save timeout answers the write late, or drops its connection. A leader kill at a phase
SIGKILLs the fencer that wrote the record (its `status.leader`): before the API server answers
the save (`before-answer`), or, `in-walk`, the moment the victim's BMC or PDU receives the
power-off request that followed the save. Each kill is recorded with the record's state at
that moment (`kills`); the runner restarts the killed fencer at the end of the episode.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.chaos.actions import FaultKind
from nodefence.hwsim.chaos.traps import Trap
from nodefence.hwsim.kube.writefaults import AppliedWrite, WriteFault
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.simcluster import SimCluster

RECORD = "fenceoperations"


def victim_machines(cluster: SimCluster, node: str) -> list[SimMachine]:
    """The machine of `node`, and its PDU outlet if it has one."""
    outlet = cluster.bmcs.outlet(node) if cluster.bmcs is not None else None
    return [cluster.fleet[node]] + ([outlet] if outlet is not None else [])


@dataclass
class TrapSprings:
    """Acts out sprung traps on `cluster`; `kills` and `killed` are the runner's own."""

    cluster: SimCluster
    say: Callable[..., None]
    now: Callable[[], float]
    threads: list[threading.Thread]
    kills: list[dict[str, Any]]  # every phase kill, as it hit
    killed: dict[int, str]  # episode -> node whose fencer it killed
    client_timeout: float = (
        5.0  # the agents' API client deadline (nodefence.agent.kube.client.ClusterApi)
    )

    def spring(self, trap: Trap, write: AppliedWrite) -> WriteFault | None:
        """Called from the API server's thread when `trap` springs on `write`."""
        if trap.kind == FaultKind.RECORD_SAVE_TIMEOUT.value:
            if trap.params.get("mode") == "drop":
                detail = f"{write.name}: {trap.moment} write applied, connection dropped"
                self.say(trap.kind, trap.node, detail, count=True)
                return WriteFault(drop=True)
            hold = self.client_timeout + 1.5
            detail = f"{write.name}: {trap.moment} write applied, answered {hold:g} s late"
            self.say(trap.kind, trap.node, detail, count=True)
            return WriteFault(hold=hold)
        writer = self.cluster.node_of(str((write.obj.get("status") or {}).get("leader") or ""))

        def kill() -> None:
            self._kill_writer(trap, write, writer)

        if trap.params.get("when") == "in-walk":
            self._kill_at_power_off(trap, write, writer)
            return None
        return WriteFault(before_answer=kill)

    def _kill_at_power_off(self, trap: Trap, write: AppliedWrite, writer: str | None) -> None:
        """`in-walk`: SIGKILL the writer the moment the victim's BMC (or PDU) receives its
        power-off request, before that request is answered: sent, not proven."""
        machines = victim_machines(self.cluster, trap.node)
        sim = self.cluster.nodes.get(writer) if writer else None

        def on_off(channel: str) -> None:
            for m in machines:
                m.off_request_hook = None
            proc = sim.fencer if sim is not None else None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # now, in the emulator's thread; reaped below
            trap.params = {**trap.params, "channel": channel}
            worker = threading.Thread(
                target=self._kill_writer, args=(trap, write, writer, proc is not None), daemon=True
            )
            self.threads.append(worker)
            worker.start()

        for m in machines:
            m.off_request_hook = on_off

    def _kill_writer(
        self, trap: Trap, write: AppliedWrite, writer: str | None, signalled: bool = False
    ) -> None:
        """SIGKILL the fencer that wrote the record (`trap` sprang; `signalled`: already sent);
        record what the record said at that moment; a victim that `comes_back` gets its
        network back."""
        try:
            stored = self.cluster.kube.store.get(RECORD, write.name, write.namespace)
            st = stored.get("status") or {}
        except Exception:
            st = {}
        phase = f"{st.get('phase')} powerOffSent={bool(st.get('powerOffSent'))}"
        phase += f" offProven={bool(st.get('offProven'))}"
        hit = _hit(trap.kind, st)
        entry = {
            "t": round(self.now(), 3),
            "kind": trap.kind,
            "victim": trap.node,
            "killed": writer,
            "record": write.name,
            "phase": phase,
            "when": trap.params.get("when", "before-answer"),
            "channel": trap.params.get("channel"),
            "hit": hit,
        }
        self.kills.append(entry)
        sim = self.cluster.nodes.get(writer) if writer else None
        if sim is None or not (signalled or sim.fencer_running()):
            self.say("skipped", writer, f"{trap.kind}: writer {writer} has no running fencer")
            return
        self.killed[trap.episode] = sim.name
        sim.kill_fencer()  # SIGKILL (again) and reap
        label = trap.kind if hit else "leader-kill-off-phase"
        self.say(label, sim.name, f"SIGKILL as {trap.node}'s {write.name} was {phase}", count=hit)
        if trap.params.get("comes_back"):
            self.cluster.nodes[trap.node].heal(start_agent=False)
            self.say("victim-back", trap.node, "network back (agent still stopped): it is alive")


def _hit(kind: str, status: dict[str, Any]) -> bool:
    """Whether the record's state at the kill is the phase the kill was aimed at."""
    sent, proven, phase = status.get("powerOffSent"), status.get("offProven"), status.get("phase")
    if kind == FaultKind.LEADER_KILL_PENDING.value:
        return not sent
    if kind == FaultKind.LEADER_KILL_SENT.value:
        return bool(sent) and not proven
    return phase == "Recovering"
