"""Node side: publish this node's heartbeats over MQTT, with a Last Will and reconnects.

One heartbeat every `interval` seconds on `nodefence/v1/<cluster>/heartbeat/<node>` (see
`agent.heartbeat_codec`), paced on the event loop's monotonic clock so a slow publish never
makes the schedule drift. On connect the agent publishes `online` (retained) on its status
topic; the broker publishes the Last Will `offline` there when the agent vanishes. When the
broker is lost the agent reconnects with jittered exponential backoff between
`reconnect_min` and `reconnect_max` seconds.

With a `key` every heartbeat is signed (`agent.heartbeat_auth`) and carries the sender's wall
clock. With `on_echo` the agent also subscribes to its own heartbeat topic: a heartbeat coming
back proves a round trip through the broker, and `on_echo` gets the monotonic time it was sent
(the self-fencing watchdog counts that as contact; see `agent.watchdog`). `claim` tells what to
advertise about the armed watchdog. A clean stop publishes `stopped` with the boot id (QoS 1,
retained) and sets `stop_announced` once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

from agent import __version__
from agent.config import BrokerConfig
from agent.heartbeat_auth import sign
from agent.heartbeat_codec import (
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
from agent.mqtt_client import make_client

log = logging.getLogger("nodefence.heartbeat")


@dataclass
class PublisherStats:
    """Counters a status page or metric can show."""

    sent: int = 0
    connects: int = 0
    disconnects: int = 0
    connected: bool = False
    last_error: str = ""
    echoes: int = 0


@dataclass
class HeartbeatPublisher:
    """Publishes heartbeats for `node` until `stop` is set."""

    broker: BrokerConfig
    cluster: str
    node: str
    interval: float = 1.0
    boot: str = field(default_factory=lambda: uuid.uuid4().hex)
    stats: PublisherStats = field(default_factory=PublisherStats)
    key: bytes | None = field(default=None, repr=False)
    claim: Callable[[], WatchdogClaim | None] | None = None
    on_echo: Callable[[float], None] | None = None
    _seq: int = 0
    _sent: collections.OrderedDict[int, float] = field(default_factory=collections.OrderedDict)
    # Set once the broker acknowledged the clean-stop status (watchdog disarm announced).
    stop_announced: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish, reconnect on loss; returns once `stop` is set (clean offline)."""
        attempt = 0
        while not stop.is_set():
            connects = self.stats.connects
            try:
                await self._session(stop)
                attempt = 0
            except aiomqtt.MqttError as err:
                self.stats.connected = False
                self.stats.disconnects += 1
                self.stats.last_error = str(err)
                log.warning("broker connection lost: %s", err, extra={"node": self.node})
            if stop.is_set():
                return
            if self.stats.connects > connects:
                attempt = 0  # it had connected: this is a new outage, start from the minimum
            ceiling = min(self.broker.reconnect_max, self.broker.reconnect_min * 2**attempt)
            attempt += 1
            delay = random.uniform(
                self.broker.reconnect_min, max(ceiling, self.broker.reconnect_min)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        status = status_topic(self.cluster, self.node)
        will = aiomqtt.Will(status, encode_status(NodeState.OFFLINE), qos=1, retain=True)
        client = make_client(self.broker, f"nodefence-agent-{self.node}", will=will)
        async with client:
            self.stats.connected = True
            self.stats.connects += 1
            log.info(
                "connected to broker %s:%s",
                self.broker.host,
                self.broker.port,
                extra={"node": self.node},
            )
            await client.publish(status, encode_status(NodeState.ONLINE), qos=1, retain=True)
            topic = heartbeat_topic(self.cluster, self.node)
            echoes: asyncio.Task[None] | None = None
            if self.on_echo is not None:
                await client.subscribe(topic, qos=0)
                echoes = asyncio.create_task(self._read_echoes(client))
            try:
                await self._beat(client, topic, stop)
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
        self.stats.connected = False

    def next_heartbeat(self) -> Heartbeat:
        """The heartbeat to send now (signed with `key`, when set)."""
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
        return sign(hb, self.key) if self.key is not None else hb

    async def _beat(self, client: aiomqtt.Client, topic: str, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            # Stamped before the claim is asked for: an echo of a heartbeat sent after the
            # claim was withdrawn (maintenance) then proves it carried no claim.
            sent_at = time.monotonic()
            hb = self.next_heartbeat()
            self._sent[hb.seq] = sent_at
            while len(self._sent) > 64:
                self._sent.popitem(last=False)
            # Bounded: a broker lost mid-publish must not delay the reconnect by aiomqtt's
            # default timeout.
            await client.publish(
                topic, encode_heartbeat(hb), qos=0, timeout=max(self.interval, 1.0)
            )
            self._seq += 1
            self.stats.sent += 1
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # we fell behind (suspended?): do not burst to catch up
                next_at = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - now)

    async def _read_echoes(self, client: aiomqtt.Client) -> None:
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
                self.stats.echoes += 1
                self.on_echo(sent)
