"""The leader's (and a warm standby's) edges to N brokers: each in its own reconnect loop.

Every agent publishes each heartbeat to every broker, so the leader hears a node as long as
one broker carries it. `BrokerSet` runs one `LeaderBroker` session per broker, each with its
own jittered backoff, and keeps what the guards need to know about them:

- `any_up_since`: since when at least one broker connection has been up without a gap (None
  while none is). Silence means something only inside that span: the policy freezes every
  decision while it is None and for one `fence_after` after it starts.
- `all_up_since()`: since when every broker connection has been up (the latest of their
  up-since moments; None while any is down). The watchdog proof needs it: a node's watchdog
  counts an echo from any broker as contact, so the leader may rule out contact only through
  brokers it heard without a break (`nodefence.agent.node.watchdog_rules`). With `silence` set, a
  broker counts only while messages keep coming from it (no gap longer than `silence`; every agent,
  the leader's own included, heartbeats through every broker): a connection that died without a word
  (a cut network drops packets, nothing closes) stays "up" until the keepalive notices, but its
  silence shows at once.

`publish` goes to every broker that is up (probe requests, the status view): any one that
works is enough. The edges are plain `LeaderBroker`s, so a simulation plugs in-memory
brokers in here just as production plugs `MqttLeaderBroker`s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.mqtt.leader_broker_client import (
    BrokerLost,
    LeaderBroker,
    MqttLeaderBroker,
    OnMessage,
)
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.brokers")

PUBLISH_TIMEOUT = 2.0  # one stuck broker must not hold up the others or the judge loop


class BrokerSet:
    """N named broker edges; see the module doc. Times are the caller's monotonic clock."""

    def __init__(
        self,
        edges: Mapping[str, LeaderBroker],
        *,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        silence: float | None = None,
    ) -> None:
        if not edges:
            raise ValueError("a BrokerSet needs at least one broker")
        self.edges = dict(edges)
        self.silence = silence
        self._heard_at: dict[str, float] = {}  # broker -> its last message
        self._flowing_since: dict[str, float] = {}  # broker -> messages without a long gap
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.clock = clock
        self.up_since: dict[str, float | None] = dict.fromkeys(self.edges)
        self.any_up_since: float | None = None
        self.connected_once = asyncio.Event()

    @classmethod
    def from_config(
        cls, brokers: Sequence[BrokerConfig], identity: str, silence: float | None = None
    ) -> BrokerSet:
        """MQTT edges to every configured broker, named by `host:port`."""
        first = brokers[0]
        return cls(
            {b.address: MqttLeaderBroker(b, identity) for b in brokers},
            reconnect_min=first.reconnect_min,
            reconnect_max=first.reconnect_max,
            silence=silence,
        )

    def up(self) -> list[str]:
        """Names of the brokers whose session is up now."""
        return [name for name, since in self.up_since.items() if since is not None]

    def all_up_since(self) -> float | None:
        """Since when every broker has been up (and, with `silence`, delivering) without a
        break, or None while one is not."""
        now = self.clock()
        latest = float("-inf")
        for name, up in self.up_since.items():
            if up is None:
                return None
            if self.silence is not None:
                heard = self._heard_at.get(name)
                if heard is None or now - heard > self.silence:
                    return None
                up = max(up, self._flowing_since[name])
            latest = max(latest, up)
        return latest

    async def run(self, filters: list[str], on_message: OnMessage) -> None:
        """Keep a session to every broker, delivering every message, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for name in self.edges:
                tg.create_task(self._keep(name, filters, on_message), name=f"broker-{name}")

    async def _keep(self, name: str, filters: list[str], on_message: OnMessage) -> None:
        edge = self.edges[name]
        attempt = 0

        def up() -> None:
            nonlocal attempt
            attempt = 0
            now = self.clock()
            self.up_since[name] = now
            if self.any_up_since is None:
                self.any_up_since = now
            self.connected_once.set()
            metrics.BROKER_CONNECTED.labels(name).set(1)
            log.info("connected to broker %s (%d of %d up)", name, len(self.up()), len(self.edges))

        deliver = on_message
        if self.silence is not None:
            silence = self.silence

            def deliver(topic: str, payload: bytes) -> None:
                now = self.clock()
                last = self._heard_at.get(name)
                if last is None or now - last > silence:
                    self._flowing_since[name] = now  # a gap: it counts again from here
                self._heard_at[name] = now
                on_message(topic, payload)

        while True:
            try:
                await edge.session(filters, deliver, up)
            except BrokerLost as err:
                # Once per outage: a broker that stays down is retried quietly.
                log.log(
                    logging.WARNING if attempt == 0 else logging.DEBUG,
                    "lost broker %s: %s",
                    name,
                    err,
                )
            finally:
                self.up_since[name] = None
                metrics.BROKER_CONNECTED.labels(name).set(0)
                if not self.up():
                    self.any_up_since = None
            attempt += 1
            await asyncio.sleep(min(self.reconnect_max, self.reconnect_min * 2 ** min(attempt, 10)))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish on every broker that is up; returns how many took it, or raises
        `BrokerLost` when none did."""
        names = self.up()

        async def one(name: str) -> bool:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await self.edges[name].publish(topic, payload, retain=retain)
            except (BrokerLost, TimeoutError) as err:
                log.debug("publish on %s failed: %s", name, err)
                return False
            return True

        sent = sum(await asyncio.gather(*(one(n) for n in names))) if names else 0
        if not sent:
            raise BrokerLost("no broker reachable")
        return sent
