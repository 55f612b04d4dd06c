"""Node side: publish this node's heartbeats to every broker over MQTT, with Last Wills and
reconnects.

One heartbeat every `interval` seconds on `nodefence/v1/<cluster>/heartbeat/<node>` (see
`nodefence.agent.heartbeat.codec`), paced on the event loop's monotonic clock so a slow publish
never makes the schedule drift. Each heartbeat (one seq) goes to every broker: one session per
broker, each with its own reconnect loop, so a broker that is down or slow delays nobody (its
session keeps only the newest heartbeat waiting). On connect the agent publishes `online`
(retained) on its status topic; the broker publishes the Last Will `offline` there when the
agent vanishes. A lost broker is reconnected with jittered exponential backoff between
`reconnect_min` and `reconnect_max` seconds.

With `own_key` every heartbeat is signed under the node's own key (`mac`), with `key` under the
key derived from the old cluster key (`hmac`, during an upgrade), and carries the sender's wall
clock (`nodefence.agent.heartbeat.signing`). With `identity` (the node's signed key announcement,
`nodefence.agent.heartbeat.node_identity`) the agent publishes it, retained, on every broker it
connects to.

With `on_echo` the agent also subscribes to its own heartbeat topic on every broker: a
heartbeat coming back proves a round trip through that broker, and `on_echo` gets the
monotonic time it was sent (the self-fencing watchdog counts that as contact, from any
broker; see `nodefence.agent.node.watchdog_rules`). `claim` tells what to advertise about the armed
watchdog. A clean stop publishes `stopped` with the boot id (QoS 1, retained) on every connected
broker and sets `stop_announced` once one of them acknowledged it: the leader listens to every
broker and takes the watchdog proof only while it heard all of them without a break, so one
acknowledgement is enough for it to know (see `nodefence.agent.node.watchdog_rules`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt

from nodefence.agent import __version__
from nodefence.agent.config.agent_file import BrokerConfig
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
from nodefence.agent.heartbeat.node_identity import identity_topic
from nodefence.agent.heartbeat.signing import sign, sign_own
from nodefence.agent.mqtt.client import make_client
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.heartbeat")


@dataclass
class PublisherStats:
    """Counters a status page or metric can show (for one broker, or summed over all)."""

    sent: int = 0
    connects: int = 0
    disconnects: int = 0
    connected: bool = False
    last_error: str = ""
    echoes: int = 0


@dataclass
class _Link:
    """One broker's session state: its counters and the newest heartbeat not yet sent."""

    broker: BrokerConfig
    stats: PublisherStats = field(default_factory=PublisherStats)
    pending: bytes | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class HeartbeatPublisher:
    """Publishes heartbeats for `node` to every broker of `broker` until `stop` is set."""

    broker: BrokerConfig | Sequence[BrokerConfig]
    cluster: str
    node: str
    interval: float = 1.0
    boot: str = field(default_factory=lambda: uuid.uuid4().hex)
    stats: PublisherStats = field(default_factory=PublisherStats)
    key: bytes | None = field(default=None, repr=False)
    own_key: bytes | None = field(default=None, repr=False)
    identity: bytes | None = None  # the retained announcement of this node's key
    claim: Callable[[], WatchdogClaim | None] | None = None
    on_echo: Callable[[float], None] | None = None
    _seq: int = 0
    _sent: collections.OrderedDict[int, float] = field(default_factory=collections.OrderedDict)
    # Set once a broker acknowledged the clean-stop status (watchdog disarm announced).
    stop_announced: asyncio.Event = field(default_factory=asyncio.Event)
    links: dict[str, _Link] = field(init=False)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        brokers = [self.broker] if isinstance(self.broker, BrokerConfig) else list(self.broker)
        if not brokers:
            raise ValueError("a heartbeat publisher needs at least one broker")
        self.links = {b.address: _Link(b) for b in brokers}

    def connected_brokers(self) -> list[str]:
        """The brokers (`host:port`) whose session is up now."""
        return [name for name, link in self.links.items() if link.stats.connected]

    async def run(self, stop: asyncio.Event) -> None:
        """Publish to every broker, reconnecting each on loss; returns once `stop` is set (a
        clean `stopped` on every broker still connected)."""
        async with asyncio.TaskGroup() as tg:
            for link in self.links.values():
                tg.create_task(self._keep(link, stop))
            tg.create_task(self._beat(stop))

    def _changed(self) -> None:
        up = self.connected_brokers()
        self.stats.connected = bool(up)
        metrics.AGENT_BROKERS.set(len(up))
        if up:
            self._connected.set()
        else:
            self._connected.clear()

    async def _keep(self, link: _Link, stop: asyncio.Event) -> None:
        """One broker's session, reconnected with jittered backoff until `stop`."""
        attempt = 0
        b = link.broker
        while not stop.is_set():
            connects = link.stats.connects
            try:
                await self._session(link, stop)
                attempt = 0
            except aiomqtt.MqttError as err:
                for st in (link.stats, self.stats):
                    st.disconnects += 1
                    st.last_error = str(err)
                # Once per outage: a broker that stays down is retried quietly.
                first = attempt == 0 or link.stats.connects > connects
                level = logging.WARNING if first else logging.DEBUG
                log.log(
                    level,
                    "broker %s connection lost: %s",
                    b.address,
                    err,
                    extra={"node": self.node},
                )
            finally:
                link.stats.connected = False
                self._changed()
            if stop.is_set():
                return
            if link.stats.connects > connects:
                attempt = 0  # it had connected: this is a new outage, start from the minimum
            ceiling = min(b.reconnect_max, b.reconnect_min * 2**attempt)
            attempt += 1
            delay = random.uniform(b.reconnect_min, max(ceiling, b.reconnect_min))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, link: _Link, stop: asyncio.Event) -> None:
        status = status_topic(self.cluster, self.node)
        will = aiomqtt.Will(status, encode_status(NodeState.OFFLINE), qos=1, retain=True)
        client = make_client(link.broker, f"nodefence-agent-{self.node}", will=will)
        async with client:
            link.pending = None  # nothing stale from before the outage
            link.stats.connected = True
            for st in (link.stats, self.stats):
                st.connects += 1
            self._changed()
            log.info("connected to broker %s", link.broker.address, extra={"node": self.node})
            await client.publish(status, encode_status(NodeState.ONLINE), qos=1, retain=True)
            if self.identity is not None:
                where = identity_topic(self.cluster, self.node)
                await client.publish(where, self.identity, qos=1, retain=True)
            topic = heartbeat_topic(self.cluster, self.node)
            echoes: asyncio.Task[None] | None = None
            if self.on_echo is not None:
                await client.subscribe(topic, qos=0)
                echoes = asyncio.create_task(self._read_echoes(client, link))
            try:
                await self._send(client, link, topic, stop)
            finally:
                if echoes is not None:
                    echoes.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await echoes
            # A clean stop says so at once instead of waiting for the Will, naming this boot:
            # the leader then knows its heartbeats no longer vouch for an armed watchdog.
            await client.publish(
                status, encode_status(NodeState.STOPPED, self.boot), qos=1, retain=True
            )
            self.stop_announced.set()

    async def _send(
        self, client: aiomqtt.Client, link: _Link, topic: str, stop: asyncio.Event
    ) -> None:
        """Publish each heartbeat handed to this link, until `stop`."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(link.wake.wait())
                try:
                    await asyncio.wait({waking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waking.cancel()
                link.wake.clear()
                payload, link.pending = link.pending, None
                if payload is None or stop.is_set():
                    continue
                # Bounded: a broker lost mid-publish must not delay the reconnect by aiomqtt's
                # default timeout.
                await client.publish(topic, payload, qos=0, timeout=max(self.interval, 1.0))
                link.stats.sent += 1
        finally:
            stopping.cancel()

    def next_heartbeat(self) -> Heartbeat:
        """The heartbeat to send now (signed with `own_key` and `key`, when set)."""
        claim = self.claim() if self.claim is not None else None
        hb = Heartbeat(
            self.node,
            self._seq,
            self.boot,
            self.interval,
            __version__,
            ts=int(time.time() * 1000),
            wd=claim,
        )
        if self.own_key is not None:
            hb = sign_own(hb, self.own_key)
        return sign(hb, self.key) if self.key is not None else hb

    async def _beat(self, stop: asyncio.Event) -> None:
        """Make one heartbeat per interval and hand it to every connected broker's session."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if not self._connected.is_set():  # no broker: nothing to send, keep no schedule
                    up = asyncio.ensure_future(self._connected.wait())
                    try:
                        await asyncio.wait({up, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        up.cancel()
                    next_at = loop.time()
                    continue
                # Stamped before the claim is asked for: an echo of a heartbeat sent after the
                # claim was withdrawn (maintenance) then proves it carried no claim.
                sent_at = time.monotonic()
                hb = self.next_heartbeat()
                self._sent[hb.seq] = sent_at
                while len(self._sent) > 64:
                    self._sent.popitem(last=False)
                payload = encode_heartbeat(hb)
                for link in self.links.values():
                    if link.stats.connected:
                        link.pending = payload  # the newest only: an older one is moot
                        link.wake.set()
                self._seq += 1
                self.stats.sent += 1
                next_at += self.interval
                now = loop.time()
                if next_at < now:  # we fell behind (suspended?): do not burst to catch up
                    next_at = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_at - now)
        finally:
            stopping.cancel()

    async def _read_echoes(self, client: aiomqtt.Client, link: _Link) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes) or self.on_echo is None:
                continue
            try:
                hb = decode_heartbeat(self.node, payload)
            except HeartbeatRejected:
                continue
            sent = self._sent.get(hb.seq) if hb.boot == self.boot else None
            if sent is not None:
                link.stats.echoes += 1
                self.stats.echoes += 1
                self.on_echo(sent)
