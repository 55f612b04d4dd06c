"""Fencers say they are there: which nodes run a fencer, for naming the warm standbys.

Each fencer publishes, on every broker (retained, QoS 1), under the fencers' broker user:

- `nodefence/v1/<cluster>/fencer/<node>`: `{"v":1,"identity":"<Lease holder identity>"}`, and
  an empty retained message as its Last Will (which clears it when the fencer vanishes).

The leader names the warm standbys on its Lease among the nodes heard here
(`nodefence.agent.leader.standby_loop`). Only the fencers' broker user may publish on these topics
(`deploy/base/mosquitto.acl`): a node cannot make itself a standby (which would give it nothing
anyway: the rights are the fencers'). Encoding is pure; `announce` is the only I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random

import aiomqtt

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.heartbeat.codec import PREFIX, valid_name
from nodefence.agent.mqtt.client import make_client

log = logging.getLogger("nodefence.fencer")


def presence_topic(cluster: str, node: str) -> str:
    """Where the fencer on `node` says it is there."""
    return f"{PREFIX}/{cluster}/fencer/{node}"


def presence_filter(cluster: str) -> str:
    """What the fencers subscribe to, to know each other."""
    return f"{PREFIX}/{cluster}/fencer/+"


def encode_presence(identity: str) -> bytes:
    """The presence payload of the fencer with Lease holder identity `identity`."""
    return json.dumps({"v": 1, "identity": identity}, separators=(",", ":")).encode()


def decode_presence(node: str, payload: bytes) -> str | None:
    """The identity a presence names; None for a cleared (empty) or malformed one."""
    if not payload or len(payload) > 512 or not valid_name(node):
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    identity = obj.get("identity") if isinstance(obj, dict) and obj.get("v") == 1 else None
    return identity if isinstance(identity, str) and 0 < len(identity) <= 253 else None


async def announce(
    brokers: tuple[BrokerConfig, ...],
    cluster: str,
    node: str,
    identity: str,
    stop: asyncio.Event,
) -> None:
    """Keep this fencer's presence on every broker until `stop` (then clear it)."""
    async with asyncio.TaskGroup() as tg:
        for broker in brokers:
            tg.create_task(_keep(broker, cluster, node, identity, stop))


async def _keep(
    broker: BrokerConfig, cluster: str, node: str, identity: str, stop: asyncio.Event
) -> None:
    topic = presence_topic(cluster, node)
    will = aiomqtt.Will(topic, b"", qos=1, retain=True)
    attempt = 0
    while not stop.is_set():
        try:
            async with make_client(broker, f"nodefence-fencer-{identity}", will=will) as client:
                attempt = 0
                await client.publish(topic, encode_presence(identity), qos=1, retain=True)
                # A restarted broker keeps no retained message: see the loss, publish again.
                lost = asyncio.ensure_future(_until_lost(client))
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (lost, stopping):
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await lost
                if stop.is_set():
                    await client.publish(topic, b"", qos=1, retain=True)
                    return
        except aiomqtt.MqttError as err:
            log.debug("fencer presence on %s: %s", broker.address, err)
        attempt += 1
        delay = random.uniform(broker.reconnect_min, min(broker.reconnect_max, 2.0**attempt))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _until_lost(client: aiomqtt.Client) -> None:
    async for _ in client.messages:  # nothing is subscribed: this ends when the session does
        pass
