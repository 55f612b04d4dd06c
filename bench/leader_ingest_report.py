"""The printed report: every consumer at every size in one table, the verdict against the
target (10,000 nodes on under one core, none dropped), and where a profiled LeaderSide spends."""

from __future__ import annotations

import argparse
import os
import pstats
from pathlib import Path

from leader_ingest_consumer import ROLES
from leader_ingest_measure import WARMUP, Row


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"leader ingest: 1 heartbeat per node per second for {args.seconds:g} s, each to"
        f" {args.brokers} broker(s), {args.generators} load generator process(es), all on"
        f" 127.0.0.1,"
        f" {os.cpu_count()} CPU(s); CPU = share of one core over the last"
        f" {args.seconds - WARMUP:g} s of load"
    )
    print(
        f"{'nodes':>6}  {'consumer':<34} {'gen msg/s':>9} {'counted/s':>9} {'CPU':>6}"
        f" {'x floor':>7} {'mosquitto':>9} {'peak RSS':>8} {'published':>9} {'dropped':>8}"
        f" {'drain':>7} {'stall':>6} {'gen CPU':>7} {'others':>6}"
    )
    floor = {r.nodes: r.cpu for r in rows if r.role == "subscriber"}
    for r in rows:
        base = floor.get(r.nodes)
        ratio = f"{r.cpu / base:6.1f}x" if base else f"{'':>7}"
        drain = f"{r.drain:6.2f}s" if r.drained else f">{r.drain:5.1f}s"
        dropped = f"{r.dropped}?" if r.still_counting else str(r.dropped)
        print(
            f"{r.nodes:>6}  {ROLES[r.role]:<34} {r.gen_rate:>9.0f} {r.counted_rate:>9.0f}"
            f" {r.cpu:>6.1%} {ratio} {r.broker_cpu:>9.1%} {r.rss_mib:>5.0f}MiB"
            f" {r.published:>9} {dropped:>8} {drain:>7} {r.stall:>5.2f}s {r.gen_cpu:>7.0%}"
            f" {r.others:>6.0%}"
        )
    print(
        "x floor: CPU relative to the bare aiomqtt subscriber at the same size. drain: how long"
        " it kept counting after the load stopped ('>': still short when draining ended; '?':"
        " still counting when --drain-max ran out, so part may be queued rather than lost)."
        " stall: the longest gap in its 0.1 s reports, i.e. its event loop blocked that long."
        " others: CPU used meanwhile by processes outside this benchmark (a busy machine skews"
        " every figure)."
    )
    for r in rows:
        if r.role == "leader" and args.kube_live:
            print(
                f"  {r.nodes} nodes, kube live: {r.kube_nodes} Nodes in its cache,"
                f" {r.lease_events} kubelet Lease events watched, {r.dead} declared dead"
            )
        if r.rejected:
            print(f"  {r.nodes} nodes, {r.role}: {r.rejected} heartbeats rejected (not dropped)")
        if r.gen_behind > 0.5:
            print(
                f"  {r.nodes} nodes, {r.role}: the generators fell {r.gen_behind:.2f} s behind"
                " schedule (short of CPU; see the gen msg/s column)"
            )


def verdict(rows: list[Row]) -> bool:
    leader = [r for r in rows if r.role == "leader"]
    if not leader:
        return True
    big = max(leader, key=lambda r: r.nodes)
    problems = []
    if big.nodes < 10_000:
        problems.append(f"the largest size measured is {big.nodes}; the target is 10,000")
    if big.cpu >= 1.0 or big.drain > 1.0 or not big.drained:
        problems.append(
            f"the leader used {big.cpu:.0%} of a core, counted {big.counted_rate:.0f} of"
            f" {big.gen_rate:.0f} msg/s and kept counting {big.drain:.1f} s after the load"
            " stopped: it does not keep up"
        )
    if big.dropped and big.still_counting:
        problems.append(
            f"{big.dropped} of {big.published} heartbeats not counted after draining for"
            f" {big.drain:.0f} s: dropped by mosquitto or still queued behind it"
        )
    elif big.dropped:
        problems.append(
            f"{big.dropped} of {big.published} heartbeats never reached it (mosquitto dropped"
            " them: the subscriber fell too far behind)"
        )
    if big.stall > 1.0:
        problems.append(
            f"its event loop stalled for up to {big.stall:.1f} s: heartbeats are stamped that"
            " late, so live nodes can look silent"
        )
    if big.dead:
        problems.append(f"it declared {big.dead} nodes dead while every node was heartbeating")
    if big.gen_rate < 0.95 * big.nodes:
        problems.append(f"the generators reached only {big.gen_rate:.0f} msg/s of {big.nodes}")
    ok = not problems
    print(
        f"target: 10,000 nodes on under one core with none dropped -> LeaderSide at {big.nodes}"
        f" nodes: {'MEETS' if ok else 'MISSES'}"
    )
    for p in problems:
        print(f"  {p}")
    return ok


def print_profile(path: Path, top: int = 20) -> None:
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), value in stats.stats.items():  # type: ignore[attr-defined]
        _cc, calls, tt, ct, _callers = value
        where = f"{Path(file).name}:{line}({func})" if line else func
        ours = any(part in file for part in ("/agent/", "/aiomqtt/", "/paho/"))
        rows.append((tt, ct, calls, where, ours))

    def show(picked: list[tuple[float, float, int, str, bool]]) -> None:
        for tt, ct, calls, where, _ in picked[:top]:
            print(f"{tt:7.2f} {tt / total:6.1%} {ct:7.2f} {ct / total:6.1%} {calls:9d}  {where}")

    print(f"\ncProfile of the LeaderSide process ({total:.1f} s of profiled CPU; the profiler")
    print("slows calls down, so read shares, not rates). Top by own time:")
    print(f"{'own s':>7} {'own %':>6} {'cum s':>7} {'cum %':>6} {'calls':>9}  function")
    show(sorted(rows, reverse=True))
    print("Top by cumulative time (with callees), agent/, aiomqtt and paho code only:")
    show(sorted((r for r in rows if r[4]), key=lambda r: r[1], reverse=True))
