"""What the leader Lease costs the API server per second: the leader, its warm standbys and
the cold candidates, with the agent's default timings and with client-go's.

    python bench/lease_cost.py [--cold 20] [--seconds 30] [--nodes 1000,10000]

Runs real `LeaderElector`s (the agent's own) against the Kubernetes API emulator on 127.0.0.1:
one leader, `kubernetes.standbys` warm standbys named on its Lease and `--cold` cold candidates,
and counts every Lease request each role makes (reads and writes) over `--seconds`, after the
standbys are named. Then the same with client-go's timings (15 / 10 / 2 s, no standbys: every
candidate reads every 2 s), as nodefence ran before. Printed: requests per second per role as
measured, and what that makes for a cluster of `--nodes` (every node runs an agent, so every
node but the leader and the standbys is a cold candidate).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nodefence.agent.config.agent_file import KubeConfig  # noqa: E402
from nodefence.agent.kube.client import ClusterApi, load_api_client  # noqa: E402
from nodefence.agent.leader.election_client import ElectionTiming, LeaderElector  # noqa: E402
from nodefence.hwsim.kube import KubeApiServer  # noqa: E402

NS, LEASE = "nodefence", "nodefence-leader"


@dataclass
class Setup:
    name: str
    timing: ElectionTiming
    standbys: int


def counted(elector: LeaderElector, calls: Counter[str]) -> None:
    """Count every Lease read and write `elector` makes, under its current role."""
    api = elector.api
    get, write = api.get_lease, api.write_lease

    def role() -> str:
        if elector.is_leader:
            return "leader"
        return "standby" if elector.is_standby else "cold"

    async def counting_get(*args: Any, **kwargs: Any) -> Any:
        calls[f"{role()} read"] += 1
        return await get(*args, **kwargs)

    async def counting_write(*args: Any, **kwargs: Any) -> Any:
        calls[f"{role()} write"] += 1
        return await write(*args, **kwargs)

    api.get_lease = counting_get  # type: ignore[method-assign]
    api.write_lease = counting_write  # type: ignore[method-assign]


async def measure(setup: Setup, kubeconfig: Path, cold: int, seconds: float) -> dict[str, float]:
    """Requests per second per role of one leader, `setup.standbys` standbys and the rest."""
    total = 1 + setup.standbys + cold
    electors = [
        LeaderElector(
            ClusterApi(load_api_client(str(kubeconfig)), timeout=5.0),
            NS,
            LEASE,
            f"{setup.name}-{i}_x",
            setup.timing,
            node=f"{setup.name}-{i}",
        )
        for i in range(total)
    ]
    stop = asyncio.Event()

    async def lead() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(e.run(lead, stop)) for e in electors]
    calls: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 30
        while not any(e.is_leader for e in electors):
            if time.monotonic() > deadline:
                raise RuntimeError("no leader within 30 s")
            await asyncio.sleep(0.05)
        leader = next(e for e in electors if e.is_leader)
        others = [e for e in electors if e is not leader]
        leader.standbys = tuple(str(e.node) for e in others[: setup.standbys])
        # Everyone has read the names (a cold candidate within its period) before counting.
        settle = max(setup.timing.retry_period, setup.timing.cold_retry_period or 0) + 1
        await asyncio.sleep(settle)
        for e in electors:
            counted(e, calls)
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    roles = {"leader": 1, "standby": setup.standbys, "cold": cold}
    rates: dict[str, float] = {}
    for role, count in roles.items():
        if count:
            done = calls[f"{role} read"] + calls[f"{role} write"]
            rates[role] = done / seconds / count  # per agent of that role
    return rates


def print_rates(setup: Setup, rates: dict[str, float], sizes: list[int]) -> None:
    t = setup.timing
    cold = t.cold_retry_period
    print(
        f"{setup.name}: Lease {t.lease_duration:g}/{t.renew_deadline:g}/{t.retry_period:g} s,"
        f" {setup.standbys} warm standbys"
        + (f", cold candidates read every {cold:g} s" if cold else ", every candidate alike")
    )
    for role, rate in rates.items():
        print(f"  {role:<8} {rate:6.2f} requests/s each")
    for n in sizes:
        cold_count = n - 1 - setup.standbys
        total = (
            rates.get("leader", 0.0)
            + setup.standbys * rates.get("standby", 0.0)
            + cold_count * rates.get("cold", 0.0)
        )
        print(f"  {n:>6} nodes: {total:8.1f} Lease requests/s in all")


async def run(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    ours = KubeConfig()
    setups = [
        Setup(
            "nodefence",
            ElectionTiming(
                ours.lease_duration, ours.renew_deadline, ours.retry_period, ours.cold_retry_period
            ),
            ours.standbys,
        ),
        Setup("client-go", ElectionTiming(15.0, 10.0, 2.0, None), 0),
    ]
    for setup in setups:
        server = KubeApiServer()
        server.start_in_thread()
        try:
            server.store.create("namespaces", {"metadata": {"name": NS}})
            kubeconfig = Path(f"/tmp/nodefence-lease-cost-{setup.name}.kubeconfig")
            server.write_kubeconfig(kubeconfig)
            rates = await measure(setup, kubeconfig, args.cold, args.seconds)
        finally:
            server.stop_thread()
        print_rates(setup, rates, sizes)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=20, help="cold candidates (default 20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="counting window (s)")
    parser.add_argument("--nodes", default="100,1000,10000", help="cluster sizes to total for")
    parser.add_argument(
        "--smoke", action="store_true", help="3 cold candidates, 4 s: that it still runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.cold, args.seconds = 3, 4.0
    if args.cold < 1 or args.seconds <= 0:
        parser.error("--cold: at least 1; --seconds: positive")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
