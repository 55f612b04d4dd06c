"""The node side of a simulated agent: heartbeats, their echo, probe answers, the watchdog.

One `NodeAgent` per agent process on a machine. Its I/O is simulated (a broker client, an API
client), its decisions are the real ones: heartbeats are built, signed and encoded by
`nodefence.agent.heartbeat.codec` / `nodefence.agent.heartbeat.signing`; whether to feed the
watchdog is the real
`nodefence.agent.node.watchdog_rules.FeedPolicy`, fed by the heartbeat echo (`echo`) and by the real
`nodefence.agent.node.marks_watch` loop over the API: the agent's watches of its own records and
Node (`nodefence.agent.node.self_watch.NodeWatch`), and reads of its records
(`nodefence.agent.leader.candidate_runner.unfinished_marks`) while no echo gives contact. Its
callbacks run in its own process context: killing the process stops them all at once.

Like `nodefence.agent.heartbeat.sender_loop.HeartbeatPublisher`: `online` retained on connect,
`offline` as the Last Will and on a clean stop, reconnects with jittered exponential backoff. Like
`nodefence.agent.node.watchdog_loop.WatchdogFeeder`: the device is armed by the first feed,
heartbeats claim the watchdog only while it is armed and fed, a clean stop disarms it unless feeding
stopped.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

from nodefence.agent import __version__
from nodefence.agent.heartbeat.codec import (
    Heartbeat,
    HeartbeatRejected,
    NodeState,
    WatchdogClaim,
    decode_heartbeat,
    encode_heartbeat,
    encode_status,
    heartbeat_topic,
    status_topic,
)
from nodefence.agent.heartbeat.node_keys import NodeSigner
from nodefence.agent.heartbeat.signing import sign_own
from nodefence.agent.leader.candidate_runner import unfinished_marks
from nodefence.agent.node.marks_watch import watch_marks
from nodefence.agent.node.self_watch import NodeWatch
from nodefence.agent.node.watchdog_rules import FeedPolicy, clean_stop_disarms
from nodefence.agent.probes.peers import (
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
)
from nodefence.agent.probes.signing import check_request, sign_result_own
from nodefence.hwsim.sim.api import SimClusterApi
from nodefence.hwsim.sim.broker import BrokerClient
from nodefence.hwsim.sim.settings import node_private_key
from nodefence.hwsim.sim.vloop import ProcState, SimProcess, spawn

if TYPE_CHECKING:
    from nodefence.hwsim.sim.machines import Machine
    from nodefence.hwsim.sim.world import World


class NodeAgent:
    """One agent process on one machine."""

    def __init__(self, world: World, machine: Machine, generation: int) -> None:
        self.world = world
        self.machine = machine
        self.node = machine.name
        self.proc = SimProcess(f"agent/{machine.name}")
        self.boot = f"{machine.name}-{machine.boots}-{generation}"
        cfg = world.cfg
        self.topic = heartbeat_topic(cfg.cluster, self.node)
        self.status = status_topic(cfg.cluster, self.node)
        # Its own key, agreed with the fencer key (signed runs): heartbeats, answers, requests.
        self.signer = (
            NodeSigner(self.node, node_private_key(self.node), cfg.auth.fencer_public_keys)
            if cfg.auth.mode != "off" and cfg.auth.fencer_public_keys
            else None
        )
        w = cfg.watchdog
        self.policy = FeedPolicy(w.cut_off_after) if w.enabled else None
        self.claim = WatchdogClaim(w.timeout, w.cut_off_after, w.feed_interval)
        self.client: BrokerClient | None = None
        self.seq = 0
        self.sent: collections.OrderedDict[int, float] = collections.OrderedDict()
        # payload -> seq of the heartbeats published lately: an echo of one of them needs no
        # decoding (anything else on the topic still goes through `decode_heartbeat`)
        self.published: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self.results = result_topic(cfg.cluster, self.node)
        self.attempt = 0
        self.connect_at = 0.0
        self.stop = asyncio.Event()
        self.api = SimClusterApi(world.api, world.rng, reachable=self.reaches_network)

    def reaches_network(self) -> bool:
        """Whether this agent's machine is on the network now."""
        return not self.machine.partitioned

    @property
    def running(self) -> bool:
        """Whether the process runs (not paused, stopped or killed)."""
        return self.proc.state is ProcState.RUNNING

    def start(self) -> None:
        """Start the process: heartbeats, and the API check when the watchdog is on."""
        w = self.world
        w.loop.call_soon(self._tick, context=self.proc.context)
        if self.policy is not None:
            cfg = w.cfg

            async def marks() -> list[str]:
                return await unfinished_marks(self.api, cfg.kube.namespace, self.node)

            own = NodeWatch(
                self.api, cfg.kube.namespace, self.node, records=True, clock=self.machine.clock
            )
            spawn(w.loop, self.proc, own.run(), f"watch-{self.node}")
            spawn(
                w.loop,
                self.proc,
                watch_marks(
                    marks,
                    self.policy,
                    cfg.watchdog.api_check_interval,
                    self.stop,
                    clock=self.machine.clock,
                    seen=own,
                ),
                f"marks-{self.node}",
            )

    # -- stopping --------------------------------------------------------------------------------

    def stop_cleanly(self) -> None:
        """SIGTERM: announce `stopped` for this boot, disarm the watchdog only as the real
        agent does (`nodefence.agent.node.watchdog_rules.clean_stop_disarms`: in contact, and
        announced), exit."""
        announced = False
        if self.client is not None and self.client.up and not self.machine.partitioned:
            announced = self.world.broker.publish(
                self.client, self.status, encode_status(NodeState.STOPPED, self.boot), True
            )
            self.world.broker.drop(self.client, "clean stop", clean=True)
        if (
            self.policy is not None
            and self.machine.watchdog.armed
            and clean_stop_disarms(self.policy, self.machine.clock(), announced)
        ):
            self.machine.disarm_watchdog()
        self.stop.set()
        self.world.loop.kill(self.proc)

    def die(self) -> None:
        """SIGKILL or power loss: nothing more goes out; the broker publishes the Last Will."""
        self.world.loop.kill(self.proc)
        if self.client is not None:
            self.world.broker.drop(self.client, "connection closed")
            self.client = None

    # -- the heartbeat loop ------------------------------------------------------------------------

    def _tick(self) -> None:
        w = self.world
        m = self.machine
        now = w.loop.time()
        if self.client is None and now >= self.connect_at:
            self._connect()
        if self.client is not None and self.client.up:
            self._beat()
        # WatchdogFeeder.tick: arm at the first allowed feed, then feed while allowed.
        if self.policy is not None and self.policy.should_feed(m.clock()):
            m.feed_watchdog(w.cfg.watchdog.timeout)
        interval = w.profile.interval / (1.0 + m.drift)
        w.loop.call_later(interval, self._tick, context=self.proc.context)

    def _armed_claim(self) -> WatchdogClaim | None:
        p = self.policy
        if p is None or not self.machine.watchdog.armed or p.stopped or p.claim_withdrawn:
            return None
        return self.claim

    def _beat(self) -> None:
        w = self.world
        m = self.machine
        hb = Heartbeat(
            self.node,
            self.seq,
            self.boot,
            w.profile.interval,
            __version__,
            ts=int(m.wall() * 1000),
            wd=self._armed_claim(),
        )
        if self.signer is not None:
            hb = sign_own(hb, self.signer.key)
        self.sent[self.seq] = m.clock()
        if len(self.sent) > 64:
            self.sent.popitem(last=False)
        self.seq += 1
        if not m.partitioned and self.client is not None:
            payload = encode_heartbeat(hb)
            self.published[payload] = hb.seq
            if len(self.published) > 64:
                self.published.popitem(last=False)
            w.broker.publish(self.client, self.topic, payload)

    def _connect(self) -> None:
        w = self.world
        client = None
        if not self.machine.partitioned:
            client = w.broker.connect(
                f"nodefence-agent-{self.node}", will=(self.status, encode_status(NodeState.OFFLINE))
            )
        if client is None:
            self.attempt += 1
            b = w.cfg.broker
            ceiling = min(b.reconnect_max, b.reconnect_min * 2**self.attempt)
            self.connect_at = (
                w.loop.time()
                + b.reconnect_min
                + w.rng.random() * max(0.0, ceiling - b.reconnect_min)
            )
            return
        self.attempt = 0
        self.client = client
        client.on_lost = self._lost
        ctx = self.proc.context
        w.broker.subscribe(client, probe_filter(w.cfg.cluster), self._on_probe, ctx)
        if self.policy is not None:
            w.broker.subscribe(client, self.topic, self._on_echo, ctx)
        w.broker.publish(client, self.status, encode_status(NodeState.ONLINE), True)

    def _lost(self, why: str) -> None:
        self.client = None
        self.connect_at = self.world.loop.time() + self.world.cfg.broker.reconnect_min

    # -- what comes back ---------------------------------------------------------------------------

    def _on_echo(self, topic: str, payload: bytes) -> None:
        if self.machine.partitioned or self.policy is None:
            return
        seq = self.published.get(payload)
        if seq is not None:  # its own: decoding it would give this boot and this seq
            sent = self.sent.get(seq)
        else:
            try:
                hb = decode_heartbeat(self.node, payload)
            except HeartbeatRejected:
                return
            sent = self.sent.get(hb.seq) if hb.boot == self.boot else None
        if sent is not None:
            self.policy.echo(sent)

    def _on_probe(self, topic: str, payload: bytes) -> None:
        w = self.world
        if self.machine.partitioned:
            return
        req = decode_request(payload)
        if req is None or self.node not in req.peers or req.suspect == self.node:
            return
        if self.signer is not None and check_request(
            req,
            self.node,
            self.signer.keys,
            required=True,
            wall_now=self.machine.wall(),
            max_skew=w.cfg.auth.max_skew,
        ):
            return  # not signed for this node by a fencer, or stale: never probed
        reachable = w.probe_reachable(self.machine, req.suspect, {t.kind for t in req.targets})
        delay = 0.005 + w.rng.random() * 0.02 if reachable else w.profile.peer_probe_timeout
        w.loop.call_later(
            delay, self._answer, req.id, req.suspect, reachable, context=self.proc.context
        )

    def _answer(self, rid: str, suspect: str, reachable: bool) -> None:
        client = self.client
        if client is None or self.machine.partitioned:
            return
        result = ProbeResult(rid, self.node, suspect, reachable, ts=int(self.machine.wall() * 1000))
        if self.signer is not None:
            result = sign_result_own(result, self.signer.key)
        self.world.broker.publish(client, self.results, encode_result(result))
