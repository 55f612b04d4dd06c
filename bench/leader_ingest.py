"""Leader ingest: heartbeats of 1,000 / 5,000 / 10,000 simulated nodes at 1 Hz via mosquitto.

    python bench/leader_ingest.py [--sizes 1000,5000,10000] [--seconds 10] [--generators 1]
                                  [--brokers 2] [--profile] [--signed] [--kube-live]

Everything runs on 127.0.0.1 in this one run. Per size, a fresh process runs the real
`LeaderSide` (against the Kubernetes API emulator holding no Nodes, unless `--kube-live`, so
what is measured is the heartbeat path: the aiomqtt subscription, decode_heartbeat,
SequenceTracker, FailureDetector.observe, and the judge loop's evaluate/decide/view every 0.1 s
over every node heard). Load generator processes publish each node's heartbeat once per second,
phases spread evenly, QoS 0 as agents do, with payloads byte-for-byte equal to
`encode_heartbeat`; they write MQTT PUBLISH frames straight to a socket, since a Python MQTT
client would spend more CPU than the leader under test on a small machine. Their actual rate is
measured and printed.

`--brokers N` (default 2, as shipped): N mosquitto brokers; the generators publish every
heartbeat to each (as agents do) and the leader listens to all of them, so it receives N copies
of each heartbeat and counts it once (the others are dropped as duplicates); the references
subscribe to every broker too. Counted and dropped figures are per heartbeat, not per copy.

Each size runs three consumers in turn, each in a fresh process: a bare aiomqtt subscriber that
only counts (the floor any aiomqtt-based leader pays), the same plus exactly what LeaderSide
does per heartbeat (decode_heartbeat, SequenceTracker, FailureDetector.observe) without
judging, and LeaderSide itself. Printed per consumer: the generators' and its counted rate; its
CPU share of one core, beside the floor's and, as the reference measured over the same window,
mosquitto's (from /proc/<pid>/stat); its peak RSS (VmHWM); heartbeats published vs counted once
it drained (dropped = the difference; TCP does not lose them, so mosquitto dropped them for a
subscriber that fell behind, unless draining ran out of time first: then it is flagged, as
some may still have been queued), how long draining took after the load stopped, the longest
stall of its event loop (a heartbeat arriving then is stamped that late); and the CPU other
processes on the machine used meanwhile. Then the verdict against the target: 10,000 nodes on
under one core with none dropped. `--profile` runs LeaderSide at the largest size once more
under cProfile and prints where its time goes (`--no-references` skips the first two).

`--kube-live`: per size, the API emulator holds a Node of a real kubelet's size (~14 KB) and a
kubelet Lease for every generated node, renewed every 10 s with each Node's status posted every
5 minutes (`nodefence.hwsim.kube.node_objects`), so the leader's informer caches list them at start
and then watch every renewal while it takes the heartbeats; printed: the Nodes its cache holds, the
Lease events it watched, and the nodes it declared dead (must be 0: every node heartbeats).

`--signed`: every heartbeat is signed as node agents sign it, each node under its own key
(`nodefence.agent.heartbeat.node_keys`: the node's X25519 key agreed with the fencer key,
HMAC-SHA256 in `mac`, the sender's clock in `ts`), and the leader runs in mode `required` with a
keyring in which every node's key is pinned (the fencer key and the node keys are made for the run,
the node keys from a seed, so that the generators and the consumers agree without passing 10,000
keys around; the consumers derive every node's MAC key before the load starts, as a running fencer
has them cached). It checks each signature and timestamp; the ingest-only reference checks them too.
Compare a run with and one without to see what authentication costs the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
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

from leader_ingest_consumer import ROLES, consumer_process  # noqa: E402
from leader_ingest_load import generator_process  # noqa: E402
from leader_ingest_measure import WARMUP, run_size  # noqa: E402
from leader_ingest_report import print_profile, print_table, verdict  # noqa: E402

from nodefence.hwsim.broker import MosquittoBroker  # noqa: E402
from nodefence.hwsim.kube import KubeApiServer  # noqa: E402


async def run_all(args: argparse.Namespace, sizes: list[int], work: Path) -> int:
    brokers = [MosquittoBroker(work / f"mqtt-{i}") for i in range(args.brokers)]
    server = KubeApiServer()
    roles = ["leader"] if args.no_references else list(ROLES)
    try:
        for broker in brokers:
            broker.start()
        pids = [b.pid for b in brokers]
        ports = [b.port for b in brokers]
        server.start_in_thread()
        server.store.create("namespaces", {"metadata": {"name": "nodefence"}})
        kubeconfig = work / "kubeconfig"
        server.write_kubeconfig(kubeconfig)
        rows = []
        for n in sizes:
            live = KubeLive(n, work) if args.kube_live else None
            try:
                for role in roles:
                    config = live.kubeconfig if live else kubeconfig
                    rows.append(await run_size(role, n, args, pids, ports, config, work))
            finally:
                if live is not None:
                    live.stop()
        print_table(rows, args)
        ok = verdict(rows)
        if args.profile:
            out = work / "leader.prof"
            size = args.profile_size or max(sizes)
            print(f"\nprofiling LeaderSide at {size} nodes ...", flush=True)
            await run_size("leader", size, args, pids, ports, kubeconfig, work, str(out))
            print_profile(out)
        elif not ok:
            print("run with --profile to see where the leader's time goes")
        return 0
    finally:
        server.stop_thread()
        for broker in brokers:
            broker.stop()


class KubeLive:
    """`--kube-live`: an API emulator of its own for one size, holding a Node of a real
    kubelet's size and a kubelet Lease for every generated node, its kubelets renewing them
    (`nodefence.hwsim.kube.node_objects`), so the leader's caches list and watch a live cluster."""

    def __init__(self, nodes: int, work: Path) -> None:
        from nodefence.hwsim.kube.node_objects import KubeletFleet, populate

        self.server = KubeApiServer(bookmark_interval=60.0)
        self.server.start_in_thread()
        store = self.server.store
        for ns in ("nodefence", "kube-node-lease"):
            with contextlib.suppress(Exception):  # "default" and others may exist already
                store.create("namespaces", {"metadata": {"name": ns}})
        names = [f"sim-{i:05d}" for i in range(nodes)]
        started = time.monotonic()
        populate(store, nodes, names=names)
        print(f"kube live: {nodes} Nodes and Leases in {time.monotonic() - started:.0f} s")
        self.kubeconfig = work / f"kubeconfig-{nodes}"
        self.server.write_kubeconfig(self.kubeconfig)
        fleet = KubeletFleet(store, self.server.traffic, names)
        assert self.server._loop is not None
        self._fleet = asyncio.run_coroutine_threadsafe(fleet.run(), self.server._loop)

    def stop(self) -> None:
        self._fleet.cancel()
        self.server.stop_thread()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="node counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per run (default 10)")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--brokers", type=int, default=2, help="brokers, each carrying every heartbeat (default 2)"
    )
    parser.add_argument(
        "--drain-max", type=float, default=45.0, help="longest wait for a consumer's backlog"
    )
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="measure LeaderSide only, not the bare subscriber and ingest-only references",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then run LeaderSide once more under cProfile and print where its time goes",
    )
    parser.add_argument(
        "--profile-size", type=int, default=0, help="nodes for --profile (default: largest)"
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="signed heartbeats, checked by the leader in mode required (see the doc)",
    )
    parser.add_argument(
        "--kube-live",
        action="store_true",
        help="the API emulator holds every node's Node and kubelet Lease, renewed as kubelets"
        " do: the leader's caches list and watch them (see the doc)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="200 nodes for 2 s (~30 s): that it still runs"
    )
    parser.add_argument("--consumer-process", help=argparse.SUPPRESS)
    parser.add_argument("--generator-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.seconds, args.drain_max = "200", 2.0, 15.0
    if args.consumer_process:
        return consumer_process(json.loads(args.consumer_process))
    if args.generator_process:
        return generator_process(json.loads(args.generator_process))
    # The run's fencer key (base64 of an X25519 private key, as the Secret holds it).
    args.key = base64.b64encode(secrets.token_bytes(32)).decode() if args.signed else ""
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.seconds < 2 * WARMUP or args.generators < 1:
        parser.error("--sizes: positive counts; --seconds: at least 2; --generators: at least 1")
    if not 1 <= args.brokers <= 8:
        parser.error("--brokers: 1 to 8")
    work = Path(tempfile.mkdtemp(prefix="nodefence-bench-"))
    try:
        return asyncio.run(run_all(args, sizes, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
