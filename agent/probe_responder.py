"""Node side of peer probes: answer the leader's requests that name this node as a peer.

The leader publishes each request on every broker it reaches, so a request may arrive once per
broker: this node probes it once (the first copy; ids are remembered) and answers on the broker
that delivered that copy, which has just proved it works. Answers are signed with this node's
heartbeat key unless `auth.mode` is off (`agent.probe_auth`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

import aiomqtt

from agent.config import AgentConfig, BrokerConfig
from agent.heartbeat_auth import node_key
from agent.mqtt_client import make_client
from agent.peers import (
    ProbeRequest,
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
    run_probe,
)
from agent.probe_auth import sign_result

log = logging.getLogger("nodefence.agent")

REMEMBERED = 1024  # request ids already taken: plenty for copies that come within seconds


class _Taken:
    """Request ids this node has already taken up (bounded, oldest forgotten first)."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._limit = limit

    def first(self, req: ProbeRequest) -> bool:
        """True the first time `req` is seen."""
        if req.id in self._ids:
            return False
        self._ids[req.id] = None
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True


async def answer_probes(cfg: AgentConfig, node: str, timeout: float, stop: asyncio.Event) -> None:
    """Probe suspects when the leader names this node as a peer, over every broker, until
    `stop`; see the module doc."""
    cluster_key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
    key = (
        node_key(cluster_key, node) if cluster_key is not None and cfg.auth.mode != "off" else None
    )
    taken = _Taken()
    async with asyncio.TaskGroup() as tg:
        for broker in cfg.brokers:
            tg.create_task(_answer_on(broker, cfg.cluster, node, key, timeout, taken, stop))


async def _answer_on(
    broker: BrokerConfig,
    cluster: str,
    node: str,
    key: bytes | None,
    timeout: float,
    taken: _Taken,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            async with make_client(broker, f"nodefence-probe-{node}") as client:
                await client.subscribe(probe_filter(cluster), qos=0)
                reading = asyncio.ensure_future(_answer(client, cluster, node, key, timeout, taken))
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reading, stopping):
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                if stop.is_set():
                    return
        except aiomqtt.MqttError as err:
            log.debug("probe responder lost broker %s: %s", broker.address, err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), broker.reconnect_max)


async def _answer(
    client: aiomqtt.Client,
    cluster: str,
    node: str,
    key: bytes | None,
    timeout: float,
    taken: _Taken,
) -> None:
    async for message in client.messages:
        payload = message.payload
        if not isinstance(payload, bytes):
            continue
        req = decode_request(payload)
        if req is None or node not in req.peers or req.suspect == node or not taken.first(req):
            continue
        reachable = await run_probe(req, timeout)
        res = ProbeResult(req.id, node, req.suspect, reachable, ts=int(time.time() * 1000))
        if key is not None:
            res = sign_result(res, key)
        await client.publish(result_topic(cluster, node), encode_result(res))
