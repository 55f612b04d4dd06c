"""The printed report: each round as it ends, then median and p95 per phase (workers) and per
victim kind, and the verdicts against the targets (overhead, ratios to a worker)."""

from __future__ import annotations

import argparse
import math
import os
import statistics

from recovery_cluster import PROFILE, settings
from recovery_rounds import KINDS, Round

from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.hwsim.simcluster import SimCluster

TARGET_OVERHEAD = 1.0
TARGET_RATIO = 2.0  # the leader's / a broker's machine vs a worker: Node deleted within 2x


def ms(x: float | None) -> str:
    return "    -   " if x is None else f"{x:7.3f}s"


def print_round(r: Round, n: int, cluster: SimCluster) -> None:
    if r.complete:
        p = r.phases()
        body = (
            f"detection {p['detection']:.3f} s, fence {p['fence']:.3f} s,"
            f" cleanup {p['cleanup']:.3f} s, VM start {p['vm_start']:.3f} s,"
            f" total {p['total']:.3f} s"
        )
    else:
        marks = {"dead": r.dead, "off": r.off, "deleted": r.deleted, "VMs": r.vms_running}
        body = "INCOMPLETE: " + ", ".join(
            f"{k} {'-' if v is None else f'+{v - r.cut:.3f} s'}" for k, v in marks.items()
        )
    veto = " (kubelet veto first)" if r.vetoed else ""
    hosts = [f"broker {i}" for i, h in enumerate(cluster.broker_hosts) if h == r.victim]
    held = f", hosting {' and '.join(hosts)}" if hosts else ""
    print(
        f"round {n} ({r.kind}: cluster {r.cluster}, {r.victim}{held}, {len(r.vms)} ColdStandby"
        f" VMs): {body}; record {r.final_phase or 'not final'}{veto}",
        flush=True,
    )


def p95(xs: list[float]) -> float:
    """Nearest-rank 95th percentile (with fewer than 20 samples, the worst one)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(0.95 * len(s)) - 1))]


def report(
    args: argparse.Namespace,
    profile: DetectionProfile,
    rounds: list[Round],
    notes: list[str],
    startups: list[float],
    split_brains: list[str],
    clusters: int,
    load_before: tuple[float, float, float],
) -> None:
    fa, boot = profile.fence_after, args.boot_delay
    s = settings(args)
    complete = [r for r in rounds if r.complete]
    done = [r for r in complete if r.kind == "worker"]
    print()
    print(
        f"recovery after a power loss: {len(complete)} of {len(rounds)} rounds complete, over"
        f" {clusters} simulated cluster(s) of {args.nodes} nodes with {args.vms} VMs (each victim"
        f" >= {args.per_victim} ColdStandby VMs), all on 127.0.0.1"
    )
    print(
        f"settings: profile {PROFILE} (heartbeat interval {profile.interval:g} s, suspect_after"
        f" {profile.suspect_after:g} s, fence_after {fa:g} s, peer_quorum {profile.peer_quorum}),"
        f" boot_delay {boot:g} s, Lease {s.lease_duration:g}/{s.renew_deadline:g}/"
        f"{s.retry_period:g} s (duration/renew deadline/retry), {s.standbys} warm standbys,"
        f" {s.brokers} brokers (on node-1 and node-2), kubelet Lease every"
        f" {args.kubelet_lease_interval:g} s, BMCs IPMI + Redfish; cluster start to a"
        f" leader: {', '.join(f'{x:.1f} s' for x in startups) or '-'}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average at start {load_before[0]:.2f}, at the end"
        f" {os.getloadavg()[0]:.2f} (1 min; other work on the machine slows the agents)"
    )
    for note in notes:
        print(f"note: {note}")
    if not done:
        print("no complete worker round: nothing to measure")
        return
    print("\nworkers (neither the leader's nor a broker's machine), phase by phase:")
    phases = [r.phases() for r in done]
    rows: list[tuple[str, list[float], str]] = [
        (
            "detection: power loss -> NodeDeclaredDead",
            [p["detection"] for p in phases],
            f"fence_after {fa:g} s after the last heartbeat"
            f" ({fa - profile.interval:g}-{fa:g} s after a power loss)",
        ),
        ("fence: -> offProven (BMC read-back)", [p["fence"] for p in phases], ""),
        ("cleanup: -> taint, release, Node deleted", [p["cleanup"] for p in phases], ""),
        (
            "VM start: Node deleted -> last VM Running",
            [p["vm_start"] for p in phases],
            f"boot_delay {boot:g} s + disk attach; target < 5 s",
        ),
        (
            "total: power loss -> all VMs Running",
            [p["total"] for p in phases],
            f"fence_after + boot_delay = {fa + boot:g} s",
        ),
    ]
    overhead = [p["total"] - (fa + boot) for p in phases]
    rows.append(
        ("overhead beyond fence_after + boot_delay", overhead, f"target < {TARGET_OVERHEAD:g} s")
    )
    extra: list[tuple[str, list[float], str]] = []
    # the victim's last heartbeat (0-1 interval before the power loss) -> dead, -> VMs Running
    since_hb = [
        (r.cut - r.last_heartbeat + p["detection"], r.cut - r.last_heartbeat + p["total"])
        for r, p in zip(done, phases, strict=True)
        if r.last_heartbeat is not None
    ]
    heard = bool(since_hb)
    from_hb = [dead - fa for dead, _ in since_hb]
    strict = [total - (fa + boot) for _, total in since_hb]
    if heard:
        extra.append(
            ("detection beyond fence_after, from last heartbeat", from_hb, "heard on mosquitto")
        )
        extra.append(
            (
                "overhead, counted from the last heartbeat",
                strict,
                f"last heartbeat -> all VMs Running, minus {fa + boot:g} s",
            )
        )
    taint = [r.deleted - r.tainted for r in done if r.tainted and r.deleted]
    if taint:
        extra.append(("  of cleanup: taint -> Node deleted", taint, ""))
    ctl = [
        r.controller_running - r.controller_lost
        for r in done
        if r.controller_running is not None and r.controller_lost is not None
    ]
    if ctl:
        extra.append(
            ("controller: node lost -> last VM Running", ctl, f"boot_delay {boot:g} s, tick 0.1 s")
        )
    records = [r.final - r.cut for r in done if r.final is not None]
    if records:
        extra.append(("power loss -> record final", records, "VM check every 0.5 s"))
    print()
    print(f"{'phase':<52} {'median':>8} {'p95':>8} {'min':>8} {'max':>8}  reference")
    for title, xs, ref in [*rows, *extra]:
        print(
            f"{title:<52} {statistics.median(xs):7.3f}s {p95(xs):7.3f}s {min(xs):7.3f}s"
            f" {max(xs):7.3f}s  {ref}"
        )
    worst = p95(overhead)
    workers = [r for r in rounds if r.kind == "worker"]
    verdict = "meets" if worst < TARGET_OVERHEAD and len(done) == len(workers) else "MISSES"
    note = " (with fewer than 20 rounds p95 is the worst round)" if len(done) < 20 else ""
    print()
    print(
        f"end-to-end overhead beyond fence_after + boot_delay ({fa + boot:g} s): median"
        f" {statistics.median(overhead):.3f} s, p95 {worst:.3f} s vs target"
        f" < {TARGET_OVERHEAD:g} s: {verdict}{note}; total / (fence_after + boot_delay) ="
        f" {statistics.median([p['total'] for p in phases]) / (fa + boot):.3f}x (median)"
    )
    phases_final = sorted({r.final_phase or "not final" for r in rounds})
    vetoes = sum(r.vetoed for r in rounds)
    if strict:
        print(
            f"counted from the victim's last heartbeat instead of the power loss (no credit for"
            f" the 0-{profile.interval:g} s of heartbeat phase): median"
            f" {statistics.median(strict):.3f} s, p95 {p95(strict):.3f} s vs target"
            f" < {TARGET_OVERHEAD:g} s: {'meets' if p95(strict) < TARGET_OVERHEAD else 'MISSES'}"
        )
    print(
        f"records: {', '.join(phases_final)}; kubelet vetoes: {vetoes}; VMs run twice (split"
        f" brains, must be 0): {len(split_brains)}"
    )
    for brain in split_brains:
        print(f"  {brain}")
    report_kinds(rounds)


def kind_ratios(rounds: list[Round]) -> dict[str, float]:
    """Median power cut -> Node deleted of the leader's / a broker's machine over a worker's."""
    deleted = {
        kind: [x for r in rounds if r.kind == kind and (x := r.to_deleted) is not None]
        for kind in KINDS
    }
    base = deleted["worker"]
    if not base:
        return {}
    worker = statistics.median(base)
    return {kind: statistics.median(deleted[kind]) / worker for kind in KINDS[1:] if deleted[kind]}


def report_kinds(rounds: list[Round]) -> None:
    """Per victim kind: power cut -> Node deleted -> VMs Running, and the ratios to a worker."""
    print()
    print(f"{'victim':<8} {'rounds':>6}  {'cut -> Node deleted':>26}  {'cut -> VMs Running':>26}")
    print(f"{'':<8} {'':>6}  {'median':>12} {'p95':>13}  {'median':>12} {'p95':>13}")
    medians: dict[str, tuple[float, float]] = {}
    for kind in KINDS:
        if not any(r.kind == kind for r in rounds):
            continue  # not asked for (--kinds) or no round of it started
        mine = [r for r in rounds if r.kind == kind and r.complete]
        deleted = [x for r in mine if (x := r.to_deleted) is not None]
        running = [x for r in mine if (x := r.to_running) is not None]
        if not deleted or not running:
            print(f"{kind:<8} {len(mine):>6}  no complete round")
            continue
        medians[kind] = (statistics.median(deleted), statistics.median(running))
        print(
            f"{kind:<8} {len(mine):>6}  {statistics.median(deleted):11.3f}s {p95(deleted):12.3f}s"
            f"  {statistics.median(running):11.3f}s {p95(running):12.3f}s"
        )
    ratios = kind_ratios(rounds)
    if "worker" in medians:
        w_deleted, w_running = medians["worker"]
        for kind in KINDS[1:]:
            if kind not in medians:
                continue
            k_deleted, k_running = medians[kind]
            verdict = "meets" if ratios[kind] <= TARGET_RATIO else "MISSES"
            print(
                f"{kind} / worker (medians): Node deleted {k_deleted / w_deleted:.2f}x, VMs"
                f" Running {k_running / w_running:.2f}x; target Node deleted <="
                f" {TARGET_RATIO:g}x: {verdict}"
            )
