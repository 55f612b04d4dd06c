"""`nodefence status` as a process, reading a leader's view from a real mosquitto: it tells
the truth (a failing fence, the VMs down, a pause, a leader gone) and its exit code says
whether someone must act. The views are what a leader publishes (agent/leader/side_loop.py); the
rules are agent/leader/status_view.py's."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from nodefence.agent.leader.view_codec import view_topic
from nodefence.hwsim.broker import MosquittoBroker
from tests.conftest import REPO, run_cli
from tests.support.brokers import running_broker

NOW = time.time  # the view's publishedAt is the leader's wall clock


def row(node: str, state: str = "healthy", heartbeat: float = 0.4, **extra: Any) -> dict[str, Any]:
    return {
        "node": node,
        "state": state,
        "heartbeatAge": heartbeat,
        "kubeletAge": 3.0,
        "ready": state == "healthy",
        "reason": f"{node} heard {heartbeat} s ago",
        "held": "",
        "maintenance": "",
        "cordoned": False,
        "inInventory": True,
        "agent": "0.1.0",
        "bmc": {"summary": "ok"},
        **extra,
    }


HEALTHY: dict[str, Any] = {
    "v": 1,
    "leader": "node-1_ab12cd34",
    "version": "0.1.0",
    "profile": "default",
    "period": 1.0,
    "frozen": False,
    "paused": None,
    "alerts": [],
    "rejected": {},
    "nodes": [row("node-1"), row("node-2"), row("node-3")],
    "operations": [],
    "inventory": {"nodes": 3, "problem": ""},
}


def failing_fence() -> dict[str, Any]:
    view = copy.deepcopy(HEALTHY)
    view["nodes"][2] = row("node-3", "dead", 41.0, bmc={"summary": "CANNOT BE FENCED"}, ready=False)
    error = "level 1 ipmi: IPMI login: the BMC refused the credentials (node=node-3)"
    view["operations"] = [
        {
            "node": "node-3",
            "id": "3f2a1b9c",
            "phase": "FenceFailed",
            "attempts": 3,
            "reason": f"fencing failed (attempt 3): {error}",
            "lastError": error,
            "offProven": False,
            "proof": "",
            "startedAt": "2026-01-02T10:00:00.000Z",
            "endedAt": None,
            "vmsDown": ["default/vm-3", "default/vm-8"],
            "vmsLeftStopped": "",
            "vms": "",
            "outageSeconds": None,
        }
    ]
    view["alerts"] = [
        {"kind": "cannot-be-fenced", "node": "node-3", "message": "node node-3 cannot be fenced"}
    ]
    return view


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, Path]]:
    with running_broker(tmp_path / "mqtt") as b:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(f"cluster: test\nbroker: {{port: {b.port}}}\n")
        yield b, cfg


async def publish(b: MosquittoBroker, view: dict[str, Any], age: float = 0.0) -> None:
    doc = {**view, "publishedAt": NOW() - age}
    async with aiomqtt.Client("127.0.0.1", b.port) as client:
        await client.publish(view_topic("test"), json.dumps(doc).encode(), qos=1, retain=True)


async def test_a_healthy_cluster_needs_nobody_and_exits_zero(
    broker: tuple[MosquittoBroker, Path],
) -> None:
    b, cfg = broker
    await publish(b, HEALTHY)
    r = await run_cli("status", "-c", str(cfg), "--wait", "5")
    assert r.code == 0, r.out + r.err
    assert "NEEDS ATTENTION" not in r.out and "STALE" not in r.out
    header = next(line for line in r.out.splitlines() if line.startswith("NODE"))
    assert header.split() == [
        "NODE", "STATE", "HEARTBEAT", "KUBELET", "READY", "MAINT", "BMC", "AGENT", "REASON"
    ]  # fmt: skip
    assert "inventory: 3 nodes" in r.out


async def test_a_failing_fence_is_shown_with_its_error_and_the_vms_down_and_exits_one(
    broker: tuple[MosquittoBroker, Path],
) -> None:
    b, cfg = broker
    await publish(b, failing_fence())
    r = await run_cli("status", "-c", str(cfg), "--wait", "5")
    assert r.code == 1, r.out + r.err
    assert "Fencing:" in r.out and "node-3  FenceFailed  attempt 3  op 3f2a1b9c" in r.out
    assert "last error: level 1 ipmi: IPMI login: the BMC refused the credentials" in r.out
    assert "VMs down: default/vm-3, default/vm-8" in r.out
    attention = r.out[r.out.index("NEEDS ATTENTION") :]
    assert "node-3: fencing failed (attempt 3)" in attention and "default/vm-8" in attention
    r = await run_cli("status", "-c", str(cfg), "--wait", "5", "-o", "json")
    doc = json.loads(r.out)
    assert r.code == 1 and doc["attention"] and doc["operations"][0]["vmsDown"]


async def test_a_view_whose_leader_is_gone_is_stale_aged_and_exits_one(
    broker: tuple[MosquittoBroker, Path],
) -> None:
    b, cfg = broker
    await publish(b, HEALTHY, age=30.0)  # the leader died 30 s ago; its view is retained
    r = await run_cli("status", "-c", str(cfg), "--wait", "5")
    assert r.code == 1, r.out + r.err
    assert re.search(r"STALE: this view is 3\d\.\d s old", r.out), r.out
    [node1] = [line for line in r.out.splitlines() if line.startswith("node-1 ")]
    heartbeat = float(node1.split()[2].rstrip("s"))
    assert 30.0 <= heartbeat < 40.0  # 0.4 s when published, 30 s ago: aged by the view's age
    assert "no leader publishes" in r.out


async def test_a_pause_is_shown_and_needs_someone_only_while_it_holds_a_dead_node(
    broker: tuple[MosquittoBroker, Path],
) -> None:
    b, cfg = broker
    paused = copy.deepcopy(HEALTHY)
    paused["paused"] = {"reason": "BMC firmware", "by": "alice@ws", "since": "2026-01-02T10:00Z"}
    await publish(b, paused)
    r = await run_cli("status", "-c", str(cfg), "--wait", "5")
    assert r.code == 0, r.out
    assert "PAUSED by alice@ws since 2026-01-02T10:00Z: BMC firmware" in r.out
    paused["nodes"][2] = row("node-3", "dead", 9.0, held="fencing is paused cluster-wide")
    await publish(b, paused)
    r = await run_cli("status", "-c", str(cfg), "--wait", "5")
    assert r.code == 1
    assert "fencing is paused and node-3 is dead: not fenced until `nodefence resume`" in r.out
    assert "not fenced: fencing is paused cluster-wide" in r.out  # the node's own row


def test_status_into_a_closed_pipe_ends_quietly(broker: tuple[MosquittoBroker, Path]) -> None:
    import asyncio

    b, cfg = broker
    asyncio.run(publish(b, failing_fence()))
    reader, writer = os.pipe()
    os.close(reader)  # `| head` that is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nodefence.agent.cli.main", "status", "-c", str(cfg)],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(writer)
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0


async def test_a_misspelt_profile_is_refused_as_the_agent_refuses_it(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("detection: {profile: defualt}\nbroker: {port: 1}\n")
    r = await run_cli("status", "-c", str(cfg), "--wait", "0.5")
    assert r.code == 2 and "defualt" in r.err and "cannot reach" not in r.err
