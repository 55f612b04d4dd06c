"""Shared fixtures: emulated BMC fleets and simulated clusters on free 127.0.0.1 ports, stopped
even on failure; the CLI as a process. The servers themselves: tests/support/fixtures.py."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nodefence.hwsim.bmcs import BmcFleet
from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.simcluster_settings import ClusterSettings
from tests.support.bmcs import running_bmcs

REPO = Path(__file__).resolve().parent.parent

# The servers tests run against (broker, Kubernetes API, TLS files): tests/support/fixtures.py.
pytest_plugins = ["tests.support.fixtures"]


@dataclass
class RunningFleet:
    """A started `BmcFleet` and its inventory file."""

    fleet: Fleet
    bmcs: BmcFleet
    inventory: Path


@pytest_asyncio.fixture
async def bmc_fleet(tmp_path: Path) -> AsyncIterator[RunningFleet]:
    """Three nodes, each with an IPMI and a Redfish (HTTPS) BMC, and their inventory."""
    fleet = Fleet.of_size(3)
    async with running_bmcs(fleet, tmp_path, power_timeout=1.5) as bmcs:
        yield RunningFleet(fleet, bmcs, bmcs.write_inventory(tmp_path / "inventory.yaml"))


@dataclass
class Result:
    """What a CLI run printed and returned."""

    code: int
    out: str
    err: str


async def run_cli(
    *args: str,
    module: str = "nodefence.agent.cli.main",
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> Result:
    """Run `python -m MODULE ARGS` as a real process without blocking the event loop."""
    # No kubeconfig unless a test gives one: a manual fence never reaches a developer's cluster.
    env = {"KUBECONFIG": os.devnull, **os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., SimCluster]]:
    """Build and start a simulated cluster with the given settings; stopped after the test."""
    started: list[SimCluster] = []

    def make(agents: bool = True, **settings: Any) -> SimCluster:
        cluster = SimCluster(tmp_path / f"cluster{len(started)}", ClusterSettings(**settings))
        started.append(cluster)
        cluster.start(agents=agents)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
