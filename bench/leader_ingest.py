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
5 minutes (`hwsim.kube.node_objects`), so the leader's informer caches list them at start and
then watch every renewal while it takes the heartbeats; printed: the Nodes its cache holds, the
Lease events it watched, and the nodes it declared dead (must be 0: every node heartbeats).

`--signed`: every heartbeat is signed as node agents sign it, each node under its own key
(`agent.node_keys`: the node's X25519 key agreed with the fencer key, HMAC-SHA256 in `mac`, the
sender's clock in `ts`), and the leader runs in mode `required` with a keyring in which every
node's key is pinned (the fencer key and the node keys are made for the run, the node keys from a
seed, so that the generators and the consumers agree without passing 10,000 keys around; the
consumers derive every node's MAC key before the load starts, as a running fencer has them
cached). It checks each signature and timestamp; the ingest-only reference checks them too.
Compare a run with and one without to see what authentication costs the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import pstats
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The sibling benchmark: the leader's config and /proc readings are the same for both.
from detection_latency import (  # noqa: E402
    CLUSTER,
    CpuMeter,
    agent_config,
    detection_profile,
    emit,
)

from agent import __version__  # noqa: E402
from agent.heartbeat_codec import Heartbeat, encode_heartbeat, heartbeat_topic  # noqa: E402
from hwsim.broker import MosquittoBroker  # noqa: E402
from hwsim.kube import KubeApiServer  # noqa: E402

WARMUP = 1.0  # seconds after the generators start before the CPU window opens
DRAIN_QUIET = 3.0  # the leader's count unchanged this long: draining is over


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the consumers, each in its own process -----------------------------------------------------

ROLES = {
    "subscriber": "aiomqtt subscriber, counting",
    "ingest": "+ decode, sequence check, observe",
    "leader": "LeaderSide (ingest + judge loop)",
}


async def report_while(
    work: Any,
    counters: Callable[[], tuple[int, int, bool]],
    stop: asyncio.Event,
    extra: Callable[[], dict[str, Any]] = dict,
) -> None:
    """Run `work`, printing (heartbeats, rejected, connected) as a JSON line every 0.1 s; a
    gap between lines longer than that is a stall of this process's event loop."""
    task = asyncio.ensure_future(work)
    while not stop.is_set() and not task.done():
        hb, rejected, connected = counters()
        emit(
            {
                "t": time.monotonic(),
                "hb": hb,
                "rejected": rejected,
                "connected": connected,
                **extra(),
            }
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # a crash surfaces here


def consumer_process(spec: dict[str, Any]) -> int:
    """Run one consumer of every heartbeat (see ROLES) until SIGTERM."""
    import cProfile
    import logging

    from agent.cluster import ClusterApi, load_api_client
    from agent.detector import FailureDetector
    from agent.heartbeat_codec import (
        HeartbeatRejected,
        SequenceTracker,
        decode_heartbeat,
        heartbeat_filter,
        node_from_topic,
    )
    from agent.leader import LeaderSide
    from agent.mqtt_client import make_client

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = agent_config(spec["ports"][0], spec["kubeconfig"], "default")
    ports = spec["ports"]
    if len(ports) > 1:  # every broker, as `broker.endpoints` lists them
        brokers = tuple(dataclasses.replace(cfg.broker, port=p) for p in ports)
        cfg = dataclasses.replace(cfg, broker=brokers[0], broker_endpoints=brokers)
    verifier = None
    keyring = None
    if spec.get("key"):
        from agent.config import AuthConfig
        from agent.heartbeat_auth import AuthMode, HeartbeatVerifier

        cfg = dataclasses.replace(cfg, auth=AuthConfig("required"))
        keyring = pinned_keyring(spec)
        verifier = HeartbeatVerifier(AuthMode.REQUIRED, None, keyring=keyring)
    profile = detection_profile(cfg)

    async def leader(stop: asyncio.Event) -> None:
        api = ClusterApi(load_api_client(spec["kubeconfig"]))
        side = LeaderSide(cfg, profile, api, "bench-leader", kube_period=3600.0, keyring=keyring)
        stats = side.stats
        await report_while(
            side.run(),
            lambda: (
                stats.heartbeats,
                sum(stats.rejected.values()),
                len(side.listener.brokers.up()) == len(ports),
            ),
            stop,
            # With --kube-live: the Nodes its caches hold, and every "dead" it declared.
            lambda: {
                "dead": sum(1 for d in stats.decisions if d[2] == "dead"),
                "kube_nodes": len(side.nodes),
                "lease_events": side.kube.leases.stats.events,
            },
        )

    async def subscriber(stop: asyncio.Event, decode: bool) -> None:
        # The heartbeat branch of the leader's ingest, on the same client, without judging;
        # one client per broker.
        counts = {"hb": 0, "rejected": 0, "connected": 0, "copies": 0}
        detector, sequences = FailureDetector(profile), SequenceTracker()

        async def consume_all() -> None:
            async with asyncio.TaskGroup() as tg:
                for broker in cfg.brokers:
                    tg.create_task(consume(broker))

        async def consume(broker: Any) -> None:
            async with make_client(broker, f"bench-{spec['role']}") as client:
                await client.subscribe(heartbeat_filter(CLUSTER), qos=0)
                counts["connected"] += 1
                async for message in client.messages:
                    if decode:
                        now = time.monotonic()
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload).encode()
                        node = node_from_topic(CLUSTER, str(message.topic))
                        if node is None:
                            continue
                        try:
                            hb = decode_heartbeat(node, data)
                            if verifier is not None:
                                verifier.check(hb, time.time())
                            if not sequences.check(hb):
                                continue  # another broker's copy
                        except HeartbeatRejected:
                            counts["rejected"] += 1
                            continue
                        detector.observe(hb, now)
                        counts["hb"] += 1
                    else:
                        counts["copies"] += 1
                        counts["hb"] = counts["copies"] // len(ports)  # per heartbeat

        await report_while(
            consume_all(),
            lambda: (counts["hb"], counts["rejected"], counts["connected"] == len(ports)),
            stop,
        )

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        if spec["role"] == "leader":
            await leader(stop)
        else:
            await subscriber(stop, decode=spec["role"] == "ingest")

    if not spec.get("profile_out"):
        asyncio.run(main())
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main())
    finally:
        profiler.disable()
        profiler.dump_stats(spec["profile_out"])
    return 0


# -- the load generator, in its own process(es) ------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect(port: int, client_id: str) -> socket.socket:
    """An MQTT 3.1.1 session, clean, keepalive 10 min (longer than any run)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 600) + struct.pack("!H", len(ident)) + ident
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise RuntimeError("mosquitto refused the load generator's CONNECT")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _publish(spec: dict[str, Any], count: int, message: Callable[[int], bytes]) -> int:
    """Publish `message(k)` (topic with its length, then payload) for k = 0, 1, ... once per
    interval per node, nodes in turn, until `seconds`; print what was sent."""
    interval, seconds = spec["interval"], spec["seconds"]
    # One connection per broker: every heartbeat goes to each, as agents send it.
    socks = [_connect(port, f"bench-load-{spec['first']}") for port in spec["ports"]]
    total = count * round(seconds / interval)
    step = interval / count  # one message every `step` seconds, nodes in turn
    start = spec["start_at"]
    sent, behind = 0, 0.0
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = time.process_time()
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - start) / step) + 1)
        if due > sent:
            behind = max(behind, now - (start + sent * step))
            batch = []
            for k in range(sent, due):
                rest = message(k)
                batch.append(b"\x30" + _remaining_length(len(rest)) + rest)
            data = b"".join(batch)
            for sock in socks:
                sock.sendall(data)
            sent = due
        time.sleep(0.002)
    last = time.monotonic()
    for sock in socks:
        sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean end, no will
        sock.close()
    emit(
        {
            "published": sent,
            "start": start,
            "end": last,
            "cpu": time.process_time() - cpu0,
            "behind": behind,
        }
    )
    return 0


def node_names(first: int, count: int) -> list[str]:
    """The simulated nodes [first, first+count)."""
    return [f"sim-{i:05d}" for i in range(first, first + count)]


def node_private(seed: str, name: str) -> Any:
    """The run's private key of node `name` (from the seed: see `--signed`)."""
    from agent.node_keys import private_key

    return private_key(hashlib.sha256(f"{seed}/{name}".encode()).digest())


def pinned_keyring(spec: dict[str, Any]) -> Any:
    """The fencers' keyring with every node of the run pinned and its MAC key derived."""
    from agent.node_keys import Keyring, decode_key, private_key, public_of

    keyring = Keyring([private_key(decode_key(spec["key"]))])
    keyring.load({n: public_of(node_private(spec["key"], n)) for n in node_names(0, spec["nodes"])})
    for name in keyring.pins:
        keyring.keys(name)
    return keyring


def _signed_generator(spec: dict[str, Any], names: list[str]) -> int:
    """As `generator_process`, every payload signed like a node agent's, under its own key (no
    byte templates: the signature covers the sequence number and the timestamp)."""
    from agent.heartbeat_auth import sign_own
    from agent.node_keys import NodeSigner, decode_key, private_key, public_of

    interval, count = spec["interval"], len(names)
    fencer_public = public_of(private_key(decode_key(spec["key"])))
    nodes = []
    for name in names:
        topic = heartbeat_topic(CLUSTER, name).encode()
        signer = NodeSigner(name, node_private(spec["key"], name), [fencer_public])
        nodes.append((name, uuid.uuid4().hex, signer.key, _length(topic) + topic))

    def message(k: int) -> bytes:
        name, boot, nkey, topic = nodes[k % count]
        hb = Heartbeat(name, k // count, boot, interval, __version__, ts=int(time.time() * 1000))
        return topic + encode_heartbeat(sign_own(hb, nkey))

    return _publish(spec, count, message)


def _length(data: bytes) -> bytes:
    return struct.pack("!H", len(data))


def generator_process(spec: dict[str, Any]) -> int:
    """Publish heartbeats of nodes [first, first+count) once per interval until `seconds`."""
    interval, count = spec["interval"], spec["count"]
    names = node_names(spec["first"], count)
    if spec.get("key"):
        return _signed_generator(spec, names)
    frames: list[tuple[bytes, bytes, bytes]] = []  # (topic with its length, payload head, tail)
    for name in names:
        hb = Heartbeat(name, 0, uuid.uuid4().hex, interval, __version__)
        head, tail = encode_heartbeat(hb).split(b'"seq":0', 1)
        topic = heartbeat_topic(CLUSTER, name).encode()
        frames.append((_length(topic) + topic, head + b'"seq":', tail))
    # The payloads must be the agent's, byte for byte.
    sample = frames[0][1] + b"12345" + frames[0][2]
    expected = encode_heartbeat(
        Heartbeat(names[0], 12345, json.loads(sample)["boot"], interval, __version__)
    )
    if sample != expected:
        raise RuntimeError(f"payload template drifted from encode_heartbeat: {sample!r}")

    def message(k: int) -> bytes:
        topic, head, tail = frames[k % count]
        return topic + head + str(k // count).encode() + tail

    return _publish(spec, count, message)


# -- one consumer at one size -------------------------------------------------------------------


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
        __file__,
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


# -- reporting ---------------------------------------------------------------------------------


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
    (`hwsim.kube.node_objects`), so the leader's caches list and watch a live cluster."""

    def __init__(self, nodes: int, work: Path) -> None:
        from hwsim.kube.node_objects import KubeletFleet, populate

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
