"""The leader's edge to the broker: one ingest session at a time, and publishing beside it.

`LeaderBroker` is the small surface `nodefence.agent.leader.side_loop.LeaderSide` needs: `session()`
connects, subscribes and delivers every message until the connection is lost (then raises
`BrokerLost`);
`publish()` sends on the current session (raising `BrokerLost` when none is up). Production
uses `MqttLeaderBroker` (aiomqtt for publishing, the lean `nodefence.agent.mqtt.ingest_client`
reader for the heartbeat stream); the deterministic simulation plugs in an in-memory broker behind
the same surface.

One `LeaderBroker` is one broker. The leader (and a warm standby) listens to several through
`nodefence.agent.mqtt.broker_set_client.BrokerSet`, which keeps one session per named edge, each in
its own reconnect loop, and publishes on every edge that is up: `LeaderSide(broker=edge)` wraps a
single edge in one; `LeaderSide(listener=Listener(BrokerSet({"a": edge_a, "b": edge_b}), ingest))`
gives it several (`nodefence.agent.leader.ingest_loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import aiomqtt

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.mqtt.client import make_client
from nodefence.agent.mqtt.ingest_client import IngestError, subscribe_stream

OnMessage = Callable[[str, bytes], None]
OnUp = Callable[[], None]


class BrokerLost(Exception):
    """The broker connection failed or was lost (the message says why, never a secret)."""


class LeaderBroker(Protocol):
    """What the leader needs of a broker."""

    async def session(self, filters: list[str], on_message: OnMessage, on_up: OnUp) -> None:
        """Connect, subscribe to `filters`, call `on_up` once subscribed, then deliver every
        message to `on_message` until the connection ends: always raises `BrokerLost`."""
        ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 0 on the current session; `BrokerLost` when no session is up."""
        ...


class MqttLeaderBroker:
    """`LeaderBroker` over a real MQTT broker."""

    def __init__(self, broker: BrokerConfig, identity: str) -> None:
        self.broker = broker
        self.identity = identity
        self._client: aiomqtt.Client | None = None

    async def session(self, filters: list[str], on_message: OnMessage, on_up: OnUp) -> None:
        """See `LeaderBroker.session`."""
        client = make_client(self.broker, f"nodefence-leader-{self.identity}")
        try:
            async with client:  # for publishing probe requests and the status view
                self._client = client
                # Heartbeats come in over a lean subscribe-only connection
                # (nodefence.agent.mqtt.ingest_client).
                await subscribe_stream(
                    self.broker, f"nodefence-ingest-{self.identity}", filters, on_message, on_up
                )
        except (aiomqtt.MqttError, IngestError) as err:
            raise BrokerLost(str(err)) from None
        finally:
            self._client = None
        raise BrokerLost("the ingest connection ended")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """See `LeaderBroker.publish`."""
        client = self._client
        if client is None:
            raise BrokerLost("not connected")
        try:
            await client.publish(topic, payload, qos=0, retain=retain)
        except aiomqtt.MqttError as err:
            raise BrokerLost(str(err)) from None
