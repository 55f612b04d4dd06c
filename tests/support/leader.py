"""A real `LeaderSide` in a test: its configuration over a broker and the API emulator, run as
a task and stopped even when it swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nodefence.agent.config.agent_file import AgentConfig, parse_config
from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.agent.kube.client import ClusterApi, load_api_client
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from tests.support.wait import eventually


def leader_config(
    cluster: str,
    kube: KubeApiServer,
    broker: MosquittoBroker,
    workdir: Path,
    heartbeat_key: bytes | None = None,
) -> AgentConfig:
    """The agent configuration of `cluster` on `broker` (quick reconnects) and `kube` (a
    kubeconfig in `workdir`); with `heartbeat_key`, signatures required (a key file, 5 s skew)."""
    kubeconfig = workdir / "kubeconfig"
    kube.write_kubeconfig(kubeconfig)
    doc: dict[str, Any] = {
        "cluster": cluster,
        "broker": {"port": broker.port, "reconnect_min": 0.05, "reconnect_max": 0.5},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
    }
    if heartbeat_key is not None:
        keyfile = workdir / "heartbeat.key"
        keyfile.write_bytes(heartbeat_key)
        doc["auth"] = {"heartbeat_key_file": str(keyfile), "max_skew": 5}
    return parse_config(doc, path=workdir / "agent.yaml", env=dict(os.environ))


def children_of(side: LeaderSide) -> list[asyncio.Task[Any]]:
    """The loop tasks `side.run()` started in its TaskGroup."""
    found = []
    for t in asyncio.all_tasks():
        frame = getattr(t.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_locals.get("self") is side:
            found.append(t)
    return found


async def cancel_and_wait(side: LeaderSide, task: asyncio.Task[None]) -> bool:
    """Cancel the leader side's task and wait for it; True when one cancellation sufficed.

    On Python 3.11 `asyncio.wait_for` (used inside aiomqtt's publish) can swallow a
    cancellation that arrives just as the awaited operation completes; the loop that swallowed
    it then runs on, and a TaskGroup never cancels a child twice. Then cancel the children
    again, with a warning, rather than hang the suite.
    """
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    if not done:
        warnings.warn(
            "LeaderSide ignored a cancellation (asyncio.wait_for race on Python 3.11)",
            stacklevel=1,
        )
        deadline = time.monotonic() + 10
        while not task.done() and time.monotonic() < deadline:
            for child in children_of(side):
                child.cancel()
            await asyncio.wait([task], timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return bool(done)


@asynccontextmanager
async def running_leader(
    cfg: AgentConfig,
    profile: DetectionProfile,
    identity: str,
    ready: Callable[[LeaderSide], object] = lambda side: side.broker_up_since is not None,
) -> AsyncIterator[tuple[LeaderSide, asyncio.Task[None]]]:
    """`LeaderSide(cfg, profile, <ClusterApi of cfg's kubeconfig>, identity)` running as a task,
    once `ready(side)` (by default: subscribed to its broker, within 10 s); cancelled after."""
    assert cfg.kube.kubeconfig is not None
    side = LeaderSide(cfg, profile, ClusterApi(load_api_client(cfg.kube.kubeconfig)), identity)
    task = asyncio.create_task(side.run())
    try:
        await eventually("the leader subscribed", lambda: ready(side), 10)
        yield side, task
    finally:
        await cancel_and_wait(side, task)
