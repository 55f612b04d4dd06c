"""The leader under test, in its own process: the config it runs with, the child's main (each
decision printed as a JSON line on the leader's clock) and the parent's reader of those lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodefence.agent.config.agent_file import AgentConfig, parse_config
from nodefence.agent.detection.profiles import DetectionProfile, profile_from_mapping

CLUSTER = "bench"


def agent_config(broker_port: int, kubeconfig: str, profile: str) -> AgentConfig:
    """The config the leader runs with: the bench broker and emulator, stock detection."""
    doc = {
        "cluster": CLUSTER,
        "broker": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
        "detection": {"profile": profile},
        "kubernetes": {"kubeconfig": kubeconfig, "namespace": "nodefence"},
        "health": {"host": "127.0.0.1", "port": 0},
    }
    return parse_config(doc, path=Path("bench-detection.yaml"), env={})


def detection_profile(cfg: AgentConfig) -> DetectionProfile:
    return profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def leader_process(broker_port: int, kubeconfig: str, profile_name: str) -> int:
    """Run the real LeaderSide; print each decision as a JSON line with the leader's clock."""
    from nodefence.agent.kube.client import ClusterApi, load_api_client
    from nodefence.agent.leader.side_loop import LeaderSide

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = agent_config(broker_port, kubeconfig, profile_name)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        side = LeaderSide(
            cfg, detection_profile(cfg), ClusterApi(load_api_client(kubeconfig)), "bench-leader"
        )
        task = asyncio.create_task(side.run())
        emit({"started": time.monotonic()})
        told = 0
        while not stop.is_set() and not task.done():
            decisions = side.stats.decisions
            for t, node, kind in decisions[told:]:
                emit({"t": t, "node": node, "kind": kind})
            told = len(decisions)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a crash of the leader side surfaces here

    asyncio.run(main())
    return 0


@dataclass
class Decision:
    t: float
    node: str
    kind: str


class LeaderProcess:
    """The leader child: its decisions arrive as JSON lines on its stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.started: float | None = None
        self.decisions: list[Decision] = []
        self.changed = asyncio.Event()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            obj = json.loads(line)
            if "started" in obj:
                self.started = obj["started"]
            else:
                self.decisions.append(Decision(obj["t"], obj["node"], obj["kind"]))
            self.changed.set()

    async def wait_for(self, predicate: Any, deadline: float) -> Any:
        """The first truthy `predicate()` as decisions arrive, or None at `deadline`."""
        while True:
            found = predicate()
            if found:
                return found
            if self.proc.returncode is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the leader exited ({self.proc.returncode}):\n{tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
