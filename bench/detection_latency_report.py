"""What each round measured (last heartbeat -> "dead"), and the printed report over the rounds:
latency percentiles against the target, missed rounds, false decisions, CPU shares."""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass

from detection_latency_leader import Decision, LeaderProcess
from detection_latency_nodes import KUBELET_LEASE_INTERVAL, LoadGenerator, SimulatedNode

from nodefence.agent.detection.profiles import DetectionProfile

TARGET_P99_OVERHEAD = 0.5


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples, p99 is the worst one)."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, -(-len(s) * q // 100) - 1))]


@dataclass
class Round:
    node: str
    last_sent: float
    dead_at: float | None
    said: list[str]

    @property
    def latency(self) -> float | None:
        return None if self.dead_at is None else self.dead_at - self.last_sent

    @property
    def vetoed(self) -> bool:
        """The leader first said "agent lost, node alive" (a kubelet renewal after the last
        heartbeat vetoed "dead" until the Lease went stale)."""
        return "agent-lost" in self.said


def report(
    args: argparse.Namespace,
    nodes: dict[str, SimulatedNode],
    leader: LeaderProcess,
    load: LoadGenerator,
    profile: DetectionProfile,
    rounds: list[Round],
    early: list[Decision],
    cpu: dict[str, float],
    slack: float,
) -> None:
    interval = profile.interval
    false_dead: list[Decision] = []
    lost_while_off: list[Decision] = []
    lost_on_reboot: list[Decision] = []
    lost_while_on: list[Decision] = []
    for d in leader.decisions:
        node = nodes[d.node]
        if d.kind == "dead" and not node.was_off_between(d.t - 1.5 * interval, d.t):
            false_dead.append(d)
        elif d.kind == "agent-lost":
            if node.was_off_between(d.t, d.t):
                lost_while_off.append(d)
            elif node.rebooting_at(d.t, 2 * interval):
                lost_on_reboot.append(d)
            else:
                lost_while_on.append(d)
    latencies = [r.latency for r in rounds if r.latency is not None]
    missed = [r for r in rounds if r.latency is None]
    fa = profile.fence_after
    print(
        f"detection latency over {len(nodes)} nodes, profile {args.profile}"
        f" (interval {interval:g} s, suspect_after {profile.suspect_after:g} s,"
        f" fence_after {fa:g} s, peer_quorum {profile.peer_quorum}),"
        f" kubelet Lease every {KUBELET_LEASE_INTERVAL:g} s, {len(rounds)} rounds (--seed"
        f" {args.seed}), all on 127.0.0.1"
    )
    if latencies:
        overhead = [x - fa for x in latencies]
        p99 = percentile(overhead, 99)
        clean = [r.latency - fa for r in rounds if r.latency is not None and not r.vetoed]
        rows = [
            ("last heartbeat -> dead (raw)", latencies),
            (f"overhead beyond fence_after ({fa:g} s)", overhead),
        ]
        if clean and len(clean) < len(overhead):
            rows.append(("overhead, rounds without a kubelet veto", clean))
        print(f"{'':<46} {'median':>9} {'p99':>9} {'min':>9} {'max':>9}")
        for title, xs in rows:
            print(
                f"{title:<46} {statistics.median(xs):8.3f}s {percentile(xs, 99):8.3f}s"
                f" {min(xs):8.3f}s {max(xs):8.3f}s"
            )
        verdict = "meets" if p99 < TARGET_P99_OVERHEAD and not missed else "MISSES"
        note = " (with fewer than 100 rounds p99 is the worst round)" if len(overhead) < 100 else ""
        print(
            f"p99 overhead {p99:.3f} s vs target < {TARGET_P99_OVERHEAD} s: {verdict}{note};"
            f" raw p99 / fence_after = {percentile(latencies, 99) / fa:.3f}x"
        )
    print(
        f"rounds without a dead decision within fence_after + {slack:g} s:"
        f" {len(missed)} of {len(rounds)}"
    )
    for r in missed:
        print(f"  {r.node}: the leader said {r.said or 'nothing'}")
    for r in rounds:
        if r.vetoed and r.latency is not None:
            print(
                f"  {r.node}: {' -> '.join(r.said)} after {r.latency:.1f} s: its kubelet renewed"
                " its Lease after the last heartbeat, which vetoes dead until the Lease is"
                " kubelet_stale_after old"
            )
    print(f"false decisions (dead while powered, must be 0): {len(false_dead)}")
    for d in false_dead:
        print(f"  {d.node} declared dead while powered (leader clock {d.t:.3f})")
    print(
        f"agent-lost said of a powered-off node (kubelet veto): {len(lost_while_off)};"
        f" of a node just powered on, before its agent's first heartbeat (its kubelet port"
        f" answers the leader's re-probe first, expected): {len(lost_on_reboot)};"
        f" of a powered node: {len(lost_while_on)}; anything before the first round:"
        f" {len(early)}"
    )
    print(f"probe results published by the peers: {load.probes_answered}")
    mosq = f"{cpu['mosquitto']:.1%}" if "mosquitto" in cpu else "n/a"
    print(
        f"CPU over the rounds, share of one core: leader process {cpu['leader']:.1%} (heartbeats,"
        f" probes, judging {len(nodes)} nodes every 0.1 s, listing Nodes and Leases every 1 s);"
        f" mosquitto (reference) {mosq}; this bench's own process (load generator, kubelets, API"
        f" emulator) {cpu['bench']:.1%}; the machine ({os.cpu_count()} CPUs)"
        f" {cpu['machine']:.1%}, of which other processes {cpu['others']:.1%}"
    )
