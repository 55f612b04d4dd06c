"""Recovery time: a node's power loss -> all its ColdStandby VMs Running on other nodes, for
a worker, for the leader's machine and for a broker's machine.

    python bench/recovery.py [--rounds 5] [--nodes 5] [--vms 10] [--boot-delay 1.0]

Everything runs on 127.0.0.1 in this one run: the simulated cluster of the end-to-end tests
(`nodefence.hwsim.simcluster`: two mosquitto brokers, each living on a node, with passwords and the
shipped ACL; the Kubernetes API emulator, emulated IPMI + Redfish BMCs, one simulated kubelet
and one real `nodefence agent` process per node, the ColdStandby controller), with the
detection profile `default` and the agent's default Lease timings (5 / 3 / 1 s, two warm
standbys).

Rounds come in threes, one per victim kind: a `worker` (neither the leader's nor a broker's
machine), the `leader`'s machine (its agent holds the Lease; a warm standby must take over
and fence it) and a `broker`'s machine (it hosts a broker, which dies with it; the leader is
elsewhere). `--rounds N` plays N of each. Each round cuts the victim's power
(`SimMachine.cut_power()`, the moment noted on CLOCK_MONOTONIC just before) and times, from
there:

  detection  -> the leader's NodeDeclaredDead Event
  fence      -> the FenceOperation record says offProven (or the FencePoweredOff Event)
  cleanup    -> the Node is deleted (after the out-of-service taint and the release of its pods
                and VolumeAttachments)
  VM start   -> the last of the node's AlwaysOn / AlwaysOnUnlessStoppedManually VMs is Running
                on another node, counted from the Node deletion (must stay under 5 s)

Every mark is the arrival, in this process, of the change in the store's own watch stream (the
API emulator runs in this process: no polling interval, a few ms at most). This process also
subscribes to the heartbeats on every broker (as the harness's own broker user), to show
detection from the victim's last heartbeat too. Printed: median and p95 of each phase for the
workers (with fewer than 20 rounds p95 is the worst round) beside the configured thresholds,
the end-to-end overhead beyond fence_after + boot_delay (target: under 1 s), and per victim
kind the median and p95 of power cut -> Node deleted and -> VMs Running, with the ratios of the
leader's and the broker's machine to the worker (target: Node deleted within 2x).

Rounds: the victim is powered on again after its round (its agent, kubelet and any broker
start, the Node re-registers) so the cluster stays whole; each victim carries at least
`--per-victim` ColdStandby VMs (topped up with `nodefence.hwsim.virtualization.vms.place_vms` before
its round). A leader round starts only once the Lease has named its warm standbys for long enough
that they heard a full window. A round that does not finish starts a fresh cluster. No round starts
after
`--max-seconds` (default 300) would be exceeded.
"""

from __future__ import annotations

import argparse
import logging
import os
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

from recovery_cluster import PROFILE, StandbyClock, pick_victim, rejoin, start_cluster  # noqa: E402
from recovery_observers import HeartbeatListener, Recorder  # noqa: E402
from recovery_report import TARGET_RATIO, kind_ratios, print_round, report  # noqa: E402
from recovery_rounds import KINDS, Round, run_round  # noqa: E402

from nodefence.agent.detection.profiles import profile_from_mapping  # noqa: E402
from nodefence.hwsim.broker import find_mosquitto  # noqa: E402
from nodefence.hwsim.simcluster import SimCluster  # noqa: E402


def run(args: argparse.Namespace, work: Path) -> int:
    profile = profile_from_mapping({"profile": PROFILE})
    settle = profile.fence_after + 2 * profile.interval
    round_timeout = profile.fence_after + profile.kubelet_stale_after + args.boot_delay + 20
    budget_end = time.monotonic() + args.max_seconds
    load_before = os.getloadavg()
    rounds: list[Round] = []
    notes: list[str] = []
    startups: list[float] = []
    split_brains: list[str] = []
    plan = [kind for _ in range(args.rounds) for kind in args.kinds]
    index = 0
    while len(rounds) < len(plan):
        left = budget_end - time.monotonic()
        if left < 30 + round_timeout / 2:
            notes.append(f"time budget ({args.max_seconds:g} s) reached after {len(rounds)} rounds")
            break
        cluster: SimCluster | None = None
        recorder: Recorder | None = None
        heartbeats: HeartbeatListener | None = None
        try:
            cluster, began = start_cluster(args, work, index)
            recorder = Recorder(cluster.kube.store)
            heartbeats = HeartbeatListener(cluster)
            cluster.wait_for("a leader", cluster.leader, 30)
            startups.append(time.monotonic() - began)
            time.sleep(settle)  # past the new leader's first judging window
            standbys = StandbyClock(cluster)
            while len(rounds) < len(plan):
                if budget_end - time.monotonic() < round_timeout / 2:
                    break
                kind = plan[len(rounds)]
                if kind == "leader" and not standbys.wait_warm(profile, 60):
                    notes.append("the leader named no warm standbys within 60 s; a fresh cluster")
                    break
                victim = pick_victim(cluster, kind)
                if victim is None:
                    notes.append(f"no {kind} to cut; a fresh cluster")
                    break
                r = run_round(
                    cluster, index, kind, victim, recorder, heartbeats, args, round_timeout
                )
                rounds.append(r)
                print_round(r, len(rounds), cluster)
                if not r.complete or r.final is None:
                    notes.append(f"round {len(rounds)} ({victim}) did not finish; a fresh cluster")
                    break
                if not rejoin(cluster, victim, heartbeats, 30):
                    notes.append(f"{victim} did not rejoin within 30 s; a fresh cluster")
                    break
                time.sleep(2 * profile.interval)  # the leader hears it again before the next cut
            split_brains += cluster.vm_controller.violations()
        except (TimeoutError, RuntimeError, OSError) as err:
            print(f"cluster {index} failed: {err}", file=sys.stderr)
            notes.append(f"cluster {index} failed: {str(err).splitlines()[0]}")
            break
        finally:
            if heartbeats is not None:
                heartbeats.stop()
            if recorder is not None:
                recorder.stop()
            if cluster is not None:
                cluster.stop()
        index += 1
    report(args, profile, rounds, notes, startups, split_brains, index, load_before)
    ratios = kind_ratios(rounds)
    ok = bool(rounds) and all(r.complete for r in rounds) and not split_brains
    return 0 if ok and all(x <= TARGET_RATIO for x in ratios.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="power losses per victim kind (default 5)"
    )
    parser.add_argument("--nodes", type=int, default=5, help="nodes per cluster (default 5)")
    parser.add_argument("--vms", type=int, default=10, help="VMs placed at start (default 10)")
    parser.add_argument(
        "--per-victim", type=int, default=2, help="ColdStandby VMs on each victim (default 2)"
    )
    parser.add_argument("--boot-delay", type=float, default=1.0, help="simulated VM boot (s)")
    parser.add_argument(
        "--kubelet-lease-interval",
        type=float,
        default=2.0,
        help="simulated kubelets renew their Lease this often (default 2 s, as the e2e tests)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop starting rounds after this long"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"victim kinds, comma-separated (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="one worker round, 4 VMs (~40 s): that it still runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.nodes, args.vms, args.per_victim = 1, 4, 4, 1
        args.kinds = "worker"
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - set(KINDS):
        parser.error(f"--kinds: some of {', '.join(KINDS)}")
    if args.nodes < 3:
        parser.error("--nodes: at least 3 (a suspect needs a peer besides the leader)")
    if args.rounds < 1 or args.per_victim < 1:
        parser.error("--rounds and --per-victim: at least 1")
    try:
        find_mosquitto()
    except FileNotFoundError as err:
        print(err)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="nodefence-bench-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
