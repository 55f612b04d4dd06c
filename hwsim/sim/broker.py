"""An in-memory MQTT broker for the simulation, and the leader's `LeaderBroker` on top of it.

Topic routing follows MQTT (`+` one level, `#` the rest, retained messages delivered on
subscribe, a Last Will published when a client vanishes without saying goodbye). Delivery is a
timer per message and subscriber: normally a few milliseconds and in order per subscriber; while
the scheduler's `DeliveryChaos` is on, messages are also delayed, reordered, duplicated or
dropped. A delivery runs in the subscriber's process context, so a paused process gets its
messages when it resumes and a killed one never does.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from nodefence.agent.mqtt.leader_broker_client import BrokerLost, OnMessage, OnUp
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import SimProcess, VirtualLoop

Deliver = Callable[[str, bytes], None]


def topic_matches(filt: str, topic: str) -> bool:
    """Whether MQTT topic filter `filt` matches `topic`."""
    if filt == topic:
        return True
    if "+" not in filt and "#" not in filt:
        return False  # no wildcard: only the topic itself
    fparts = filt.split("/")
    tparts = topic.split("/")
    if topic.startswith("$") and fparts[0] in ("+", "#"):
        return False
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts) or (f != "+" and f != tparts[i]):
            return False
    return len(fparts) == len(tparts)


@dataclass
class DeliveryChaos:
    """How badly the broker delivers while a chaos window is open (probabilities per message)."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_delay: float = 0.0  # extra delay, uniform in [0, max_delay]


@dataclass(eq=False)
class Subscription:
    """One subscribed filter of one client."""

    client: BrokerClient
    filter: str
    deliver: Deliver
    context: contextvars.Context
    last_at: float = 0.0  # keeps deliveries in order per subscriber
    active: bool = True


@dataclass(eq=False)
class BrokerClient:
    """One MQTT connection."""

    name: str
    will: tuple[str, bytes] | None = None
    on_lost: Callable[[str], None] | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    up: bool = True


class SimBroker:
    """The broker: clients, subscriptions, retained messages, and delivery timers."""

    def __init__(self, loop: VirtualLoop, rng: random.Random, trace: Trace) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.clients: dict[str, BrokerClient] = {}
        self.retained: dict[str, bytes] = {}
        self._subs: list[Subscription] = []
        # topic -> the active subscriptions matching it, in subscription order (kept up to
        # date on every subscribe and drop, so a topic is matched against the filters once)
        self._routes: dict[str, list[Subscription]] = {}
        self.down_until = 0.0
        self.chaos = DeliveryChaos()
        self.chaos_until = 0.0
        self.published = 0
        self.delivered = 0

    @property
    def up(self) -> bool:
        """Whether the broker accepts connections now."""
        return self.loop.time() >= self.down_until

    def connect(self, name: str, will: tuple[str, bytes] | None = None) -> BrokerClient | None:
        """A new connection for client id `name` (taking over an older one), or None while
        the broker is down."""
        if not self.up:
            return None
        old = self.clients.get(name)
        if old is not None and old.up:
            self.drop(old, "session taken over", clean=True)
        client = BrokerClient(name, will)
        self.clients[name] = client
        return client

    def drop(self, client: BrokerClient, why: str, *, clean: bool = False) -> None:
        """End `client`'s connection; unless `clean`, publish its Last Will."""
        if not client.up:
            return
        client.up = False
        for sub in client.subscriptions:
            sub.active = False
        if client.subscriptions:
            self._subs = [s for s in self._subs if s.active]
            for topic, subs in self._routes.items():
                self._routes[topic] = [s for s in subs if s.active]
        client.subscriptions = []
        if self.clients.get(client.name) is client:
            del self.clients[client.name]
        if not clean and client.will is not None:
            topic, payload = client.will
            self._route(topic, payload, retain=True)
        lost, client.on_lost = client.on_lost, None
        if lost is not None:
            lost(why)

    def go_down(self, seconds: float) -> None:
        """Stop the broker for `seconds`: every connection is lost (the restart case)."""
        self.down_until = max(self.down_until, self.loop.time() + seconds)
        for client in list(self.clients.values()):
            self.drop(client, "broker restarting", clean=True)

    def subscribe(
        self, client: BrokerClient, filt: str, deliver: Deliver, context: contextvars.Context
    ) -> None:
        """Subscribe `client` to `filt`; matching retained messages are delivered at once."""
        if not client.up:
            return
        sub = Subscription(client, filt, deliver, context)
        client.subscriptions.append(sub)
        self._subs.append(sub)
        # The newest subscription comes last in every route, as in `_subs`.
        if "+" in filt or "#" in filt:
            for topic, subs in self._routes.items():
                if topic_matches(filt, topic):
                    subs.append(sub)
            retained = [(t, p) for t, p in self.retained.items() if topic_matches(filt, t)]
        else:  # a filter without wildcards matches its own topic only
            route = self._routes.get(filt)
            if route is not None:
                route.append(sub)
            payload = self.retained.get(filt)
            retained = [] if payload is None else [(filt, payload)]
        for topic, payload in retained:
            self._schedule(sub, topic, payload)

    def publish(
        self, client: BrokerClient, topic: str, payload: bytes, retain: bool = False
    ) -> bool:
        """Publish on `client`'s connection; False (nothing sent) when it is down."""
        if not client.up:
            return False
        self._route(topic, payload, retain)
        return True

    def _route(self, topic: str, payload: bytes, retain: bool) -> None:
        self.published += 1
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        subs = self._routes.get(topic)
        if subs is None:
            subs = [s for s in self._subs if topic_matches(s.filter, topic)]
            self._routes[topic] = subs
        for sub in subs:
            self._schedule(sub, topic, payload)

    def _schedule(self, sub: Subscription, topic: str, payload: bytes) -> None:
        now = self.loop.time()
        rng = self.rng
        at = now + 0.001 + rng.random() * 0.009
        copies = 1
        if now < self.chaos_until:
            c = self.chaos
            if c.drop and rng.random() < c.drop:
                self.trace.faults["msg-dropped"] += 1
                return
            if c.duplicate and rng.random() < c.duplicate:
                copies = 2
                self.trace.faults["msg-duplicated"] += 1
            if c.max_delay:
                at += rng.random() * c.max_delay
            if c.reorder and rng.random() < c.reorder:
                self.trace.faults["msg-reordered"] += 1
                sub_at = at  # may overtake earlier messages
            else:
                sub_at = max(at, sub.last_at + 1e-6)
        else:
            sub_at = max(at, sub.last_at + 1e-6)
        sub.last_at = max(sub.last_at, sub_at)
        for i in range(copies):
            self.loop.call_at(
                sub_at + i * 0.002, self._deliver, sub, topic, payload, context=sub.context
            )

    def _deliver(self, sub: Subscription, topic: str, payload: bytes) -> None:
        if sub.active:
            self.delivered += 1
            sub.deliver(topic, payload)


DeliveryObserver = Callable[[SimProcess, str, bytes, OnMessage], None]


class SimLeaderBroker:
    """`nodefence.agent.mqtt.leader_broker_client.LeaderBroker` over the simulated broker, for one
    process.

    `observe(proc, topic, payload, on_message)` is called for every delivered message instead
    of `on_message` itself, so the invariants can see what reached the leader's ingest.
    """

    def __init__(
        self,
        broker: SimBroker,
        proc: SimProcess,
        client_id: str,
        observe: DeliveryObserver,
        reachable: Callable[[], bool],
    ) -> None:
        self.broker = broker
        self.proc = proc
        self.client_id = client_id
        self.observe = observe
        self.reachable = reachable
        self.client: BrokerClient | None = None

    async def session(self, filters: list[str], on_message: OnMessage, on_up: OnUp) -> None:
        """See `nodefence.agent.mqtt.leader_broker_client.LeaderBroker.session`."""
        loop = self.broker.loop
        await asyncio.sleep(0.002 + self.broker.rng.random() * 0.01)  # CONNECT / CONNACK
        client = self.broker.connect(self.client_id) if self.reachable() else None
        if client is None:
            await asyncio.sleep(1.0)  # the connect attempt times out
            raise BrokerLost("cannot connect to the broker")
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(why: str) -> None:
            if not lost.done():
                lost.set_exception(BrokerLost(why))

        client.on_lost = on_lost
        context = contextvars.copy_context()  # this process's: deliveries pause with it
        proc, observe = self.proc, self.observe

        def deliver(topic: str, payload: bytes) -> None:
            observe(proc, topic, payload, on_message)

        for filt in filters:
            self.broker.subscribe(client, filt, deliver, context)
        self.client = client
        on_up()
        try:
            await lost
        finally:
            self.client = None
            client.on_lost = None
            self.broker.drop(client, "session closed", clean=True)
        raise BrokerLost("the ingest connection ended")  # pragma: no cover - lost raises

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """See `nodefence.agent.mqtt.leader_broker_client.LeaderBroker.publish`."""
        client = self.client
        if client is None or not self.broker.publish(client, topic, payload, retain):
            raise BrokerLost("not connected")
