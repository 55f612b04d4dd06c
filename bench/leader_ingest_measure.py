"""One consumer at one size: start it and the load generators (each a child running the bench's
own script), measure its rate, CPU, peak RSS, drain and event-loop stalls, and return its Row."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detection_latency_cpu import CpuMeter

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "bench" / "leader_ingest.py"  # the children: --consumer-process, --generator-process

WARMUP = 1.0  # seconds after the generators start before the CPU window opens
DRAIN_QUIET = 3.0  # the leader's count unchanged this long: draining is over


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Row:
    role: str
    nodes: int
    published: int
    gen_rate: float
    gen_behind: float
    counted_rate: float
    counted: int
    rejected: int
    drain: float
    drained: bool
    still_counting: bool  # draining ran out of time while the count still rose
    stall: float
    cpu: float
    broker_cpu: float
    gen_cpu: float
    others: float
    rss_mib: float
    dead: int = 0  # nodes the leader declared dead while every node sent heartbeats
    kube_nodes: int = 0  # the Nodes its caches held at the end
    lease_events: int = 0  # kubelet Lease events its watch delivered

    @property
    def dropped(self) -> int:
        return self.published - self.counted - self.rejected


class Consumer:
    """A consumer child; its counters arrive as JSON lines on stdout, every 0.1 s."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[tuple[float, int]] = []  # (t, heartbeats + rejected)
        self.latest: dict[str, Any] = {"t": 0.0, "hb": 0, "rejected": 0, "connected": False}
        self.changed_at = 0.0

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            obj = json.loads(line)
            count = obj["hb"] + obj["rejected"]
            if not self.lines or count != self.lines[-1][1]:
                self.changed_at = obj["t"]
            self.lines.append((obj["t"], count))
            self.latest = obj

    @property
    def counted(self) -> int:
        return int(self.latest["hb"]) + int(self.latest["rejected"])

    def stall(self, start: float, end: float) -> float:
        """The longest gap between two reports within [start, end]: its loop was blocked."""
        ts = [t for t, _ in self.lines if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(ts)), default=0.0)

    def check(self) -> None:
        if self.proc.returncode is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"a consumer exited ({self.proc.returncode}):\n{tail}")


async def spawn(option: str, spec: dict[str, Any], stderr: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ENTRY),
        option,
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
    )


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def run_size(
    role: str,
    nodes: int,
    args: argparse.Namespace,
    broker_pids: list[int],
    broker_ports: list[int],
    kubeconfig: Path,
    work: Path,
    profile_out: str = "",
) -> Row:
    log = work / f"{role}-{nodes}.log"
    procs: list[asyncio.subprocess.Process] = []
    reader: asyncio.Task[None] | None = None
    try:
        spec = {
            "role": role,
            "ports": broker_ports,
            "kubeconfig": str(kubeconfig),
            "key": args.key,
            "nodes": nodes,
        }
        with log.open("wb") as err:
            proc = await spawn("--consumer-process", {**spec, "profile_out": profile_out}, err)
        procs.append(proc)
        consumer = Consumer(proc, log)
        reader = asyncio.create_task(consumer.read())
        deadline = time.monotonic() + 30
        while not consumer.latest["connected"]:
            consumer.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {role} did not connect to the broker within 30 s")
            await asyncio.sleep(0.05)

        start_at = time.monotonic() + 1.5  # the generators start and build frames first
        gens = []
        share = -(-nodes // args.generators)
        for first in range(0, nodes, share):
            load = {
                "ports": broker_ports,
                "first": first,
                "count": min(share, nodes - first),
                "interval": 1.0,
                "seconds": args.seconds,
                "start_at": start_at,
                "key": args.key,
            }
            gens.append(await spawn("--generator-process", load, None))
            procs.append(gens[-1])

        pids = {"consumer": proc.pid, **{f"mosquitto-{i}": p for i, p in enumerate(broker_pids)}}
        await sleep_until(start_at + WARMUP)
        t0, counted0 = time.monotonic(), consumer.counted
        meter = CpuMeter(pids)
        await sleep_until(start_at + args.seconds)
        t1, counted1 = time.monotonic(), consumer.counted
        cpu = meter.shares()

        results = []
        for gen in gens:
            out, _ = await asyncio.wait_for(gen.communicate(), args.seconds + 30)
            if gen.returncode != 0:
                raise RuntimeError(f"a load generator failed ({gen.returncode})")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        published = sum(r["published"] for r in results)
        gen_end = max(r["end"] for r in results)
        gen_cpu = sum(r["cpu"] / (r["end"] - r["start"]) for r in results)

        # Drain: until every heartbeat is counted, or the count stood still for DRAIN_QUIET
        # while the consumer kept reporting (a blocked loop reports nothing: keep waiting).
        deadline = time.monotonic() + args.drain_max
        while consumer.counted < published and time.monotonic() < deadline:
            consumer.check()
            if consumer.latest["t"] - max(consumer.changed_at, gen_end) > DRAIN_QUIET:
                break
            await asyncio.sleep(0.05)
        return Row(
            role=role,
            nodes=nodes,
            published=published,
            gen_rate=published / (gen_end - start_at),
            gen_behind=max(r["behind"] for r in results),
            counted_rate=(counted1 - counted0) / (t1 - t0),
            counted=int(consumer.latest["hb"]),
            rejected=int(consumer.latest["rejected"]),
            drain=max(0.0, consumer.changed_at - gen_end),
            drained=consumer.counted >= published,
            still_counting=consumer.counted < published
            and consumer.latest["t"] - max(consumer.changed_at, gen_end) <= DRAIN_QUIET,
            stall=consumer.stall(start_at, time.monotonic()),
            cpu=cpu["consumer"],
            broker_cpu=sum(cpu.get(f"mosquitto-{i}", 0.0) for i in range(len(broker_pids))),
            gen_cpu=gen_cpu,
            others=max(0.0, cpu["others"] - gen_cpu),
            rss_mib=peak_rss_mib(proc.pid),
            dead=int(consumer.latest.get("dead", 0)),
            kube_nodes=int(consumer.latest.get("kube_nodes", 0)),
            lease_events=int(consumer.latest.get("lease_events", 0)),
        )
    finally:
        for p in procs:
            await stop_process(p, 5)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
