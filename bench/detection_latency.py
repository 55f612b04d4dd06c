"""Detection latency: a node powered off -> the leader's "dead" decision, over 100 nodes.

    python bench/detection_latency.py [--nodes 100] [--rounds 30] [--profile default]

Everything runs on 127.0.0.1 in this one run: mosquitto; the Kubernetes API emulator with one
Node per simulated node (a SimKubelet renewing its Lease every 10 s, as a real kubelet does,
and a KubeletPort peers can reach while the node has power); one load generator that publishes
every node's heartbeats at the profile interval over aiomqtt and, as each node's agent would,
answers the leader's probe requests (`run_probe`, result on the peer's result topic); and the
real `LeaderSide` in its own process, so its CPU is its own.

Each round "powers off" one random node at a random moment of its heartbeat period (its
heartbeats stop, its kubelet stops, its port closes) and measures from its last heartbeat sent
to the leader's "dead" decision. Both ends are CLOCK_MONOTONIC, which every process on one
Linux machine shares: the generator stamps a heartbeat just before handing it to the client,
the leader stamps its decision (`LeaderStats.decisions`) and prints it as a JSON line. The node
is powered on again (new boot id) before the next round, so at most one node is off at a time
and the storm guard stays quiet.

Printed: median and p99 of the latency beyond the configured `fence_after` (target: p99 under
0.5 s) and of the raw latency, also without the rounds where a kubelet Lease renewal made
after the last heartbeat vetoed "dead" for a while (each such round is listed); rounds where
the leader did not say "dead" within the round's deadline, and what it said instead; false
decisions (a node declared dead while it had power: must be 0); the leader's CPU share beside
mosquitto's and the machine's, measured over the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# agent/ and hwsim/ from the repository, and this bench's own modules beside this file: run as
# a script, bench/ is on sys.path already; loaded by path (tests/bench/test_bench_recovery.py), not.
sys.path[:0] = [str(REPO), str(BENCH)]

from detection_latency_cpu import CpuMeter, child_pid  # noqa: E402
from detection_latency_leader import (  # noqa: E402
    Decision,
    LeaderProcess,
    agent_config,
    detection_profile,
    leader_process,
)
from detection_latency_nodes import Kubelets, LoadGenerator, SimulatedNode, open_port  # noqa: E402
from detection_latency_report import Round, report  # noqa: E402

from nodefence.agent.detection.profiles import DetectionProfile  # noqa: E402
from nodefence.hwsim.broker import MosquittoBroker  # noqa: E402
from nodefence.hwsim.kube import KubeApiServer  # noqa: E402


async def run_rounds(args: argparse.Namespace, work: Path) -> int:
    broker = MosquittoBroker(work / "mqtt")
    server = KubeApiServer()
    nodes: dict[str, SimulatedNode] = {}
    kubelets: Kubelets | None = None
    leader: LeaderProcess | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        broker.start()
        server.start_in_thread()
        server.store.create("namespaces", {"metadata": {"name": "nodefence"}})
        kubeconfig = work / "kubeconfig"
        server.write_kubeconfig(kubeconfig)
        for i in range(args.nodes):
            name = f"node-{i:03d}"
            nodes[name] = SimulatedNode(name, open_port())
        kubelets = Kubelets(server, nodes)
        cfg = agent_config(broker.port, str(kubeconfig), args.profile)
        profile = detection_profile(cfg)

        load = LoadGenerator(nodes, broker.port, profile)
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(load.run(ready)))
        await asyncio.wait_for(ready.wait(), 10)

        log = work / "leader.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--leader-process",
                f"{broker.port},{kubeconfig},{args.profile}",
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=REPO,
            )
        leader = LeaderProcess(proc, log)
        tasks.append(asyncio.create_task(leader.read()))
        started = await leader.wait_for(lambda: leader.started, time.monotonic() + 30)
        if started is None:
            raise RuntimeError("the leader did not start within 30 s")
        # A new leader judges nobody for one fence_after; give it one more interval to settle.
        await asyncio.sleep(
            max(0.0, started + profile.fence_after + 2 * profile.interval - time.monotonic())
        )
        return await measure(args, nodes, leader, load, profile)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if leader is not None and leader.proc.returncode is None:
            leader.proc.terminate()
            try:
                await asyncio.wait_for(leader.proc.wait(), 5)
            except TimeoutError:
                leader.proc.kill()
                await leader.proc.wait()
        if kubelets is not None:
            kubelets.stop()
        for node in nodes.values():
            node.port.close()
        server.stop_thread()
        broker.stop()


async def measure(
    args: argparse.Namespace,
    nodes: dict[str, SimulatedNode],
    leader: LeaderProcess,
    load: LoadGenerator,
    profile: DetectionProfile,
) -> int:
    rng = random.Random(args.seed)
    mosquitto = child_pid("mosquitto")
    pids = {"leader": leader.proc.pid, **({"mosquitto": mosquitto} if mosquitto else {})}
    meter = CpuMeter(pids)
    wall0 = time.monotonic()
    budget_end = wall0 + args.max_seconds
    early = list(leader.decisions)  # anything said before the first power-off is wrong
    slack = args.round_slack if args.round_slack is not None else profile.kubelet_stale_after + 3
    round_timeout = profile.fence_after + slack
    rounds: list[Round] = []
    recent: list[str] = []
    for _ in range(args.rounds):
        if time.monotonic() + round_timeout > budget_end:
            print(f"time budget ({args.max_seconds:g} s) reached after {len(rounds)} rounds")
            break
        candidates = [n for n in nodes if nodes[n].powered and n not in recent]
        victim = nodes[rng.choice(candidates)]
        recent = [*recent, victim.name][-5:]
        await asyncio.sleep(rng.uniform(0.0, profile.interval))  # a random moment of its period
        victim.power_off()
        last_sent = victim.last_sent or 0.0
        seen = len(leader.decisions)

        def dead(victim: SimulatedNode = victim, seen: int = seen) -> Decision | None:
            return next(
                (d for d in leader.decisions[seen:] if d.node == victim.name and d.kind == "dead"),
                None,
            )

        found = await leader.wait_for(dead, last_sent + round_timeout)
        said = [d.kind for d in leader.decisions[seen:] if d.node == victim.name]
        rounds.append(Round(victim.name, last_sent, found.t if found else None, said))
        victim.power_on()
    # All powered again: one more fence_after with nobody off, to catch late false decisions.
    await asyncio.sleep(profile.fence_after + 2 * profile.interval)
    report(args, nodes, leader, load, profile, rounds, early, meter.shares(), slack)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30, help="power-offs (default 30, ~2.5 min)")
    parser.add_argument("--profile", default="default", help="fast | default | conservative")
    parser.add_argument("--seed", type=int, default=None, help="seed for victims and moments")
    parser.add_argument(
        "--round-slack",
        type=float,
        default=None,
        help="a round ends fence_after + this many seconds after the last heartbeat"
        " (default: kubelet_stale_after + 3, so a kubelet veto that runs out is still timed)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop starting rounds after this long"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="10 nodes, 2 rounds (~30 s): that it still runs"
    )
    parser.add_argument("--leader-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.nodes, args.rounds = 10, 2
    if args.leader_process:
        port, kubeconfig, profile = args.leader_process.split(",")
        return leader_process(int(port), kubeconfig, profile)
    if args.nodes < 3:
        parser.error("--nodes: at least 3 (a suspect needs peers)")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    work = Path(tempfile.mkdtemp(prefix="nodefence-bench-"))
    try:
        return asyncio.run(run_rounds(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
