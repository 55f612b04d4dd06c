"""Node side of peer probes: answer the leader's requests that name this node as a peer.

The leader publishes each request on every broker it reaches, so a request may arrive once per
broker: this node probes it once (the first copy; ids are remembered) and answers on the broker
that delivered that copy, which has just proved it works. A request must be signed for this
node under its own key and fresh (`nodefence.agent.probes.signing.check_request`), unless signatures
are off,
`permissive`, or the old cluster key is still configured (an upgrade: leaders of the old
release send unsigned requests); a refused one is counted
(`nodefence_messages_rejected_total{reason}`: `request_unsigned`, `request_bad_signature`,
`request_stale`) and never probed. Answers are signed like heartbeats: `mac` under this node's
own key, `hmac` under the old cluster key while it is configured.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

import aiomqtt

from nodefence.agent.config.agent_file import AgentConfig, BrokerConfig
from nodefence.agent.heartbeat.node_keys import NodeSigner
from nodefence.agent.mqtt.client import make_client
from nodefence.agent.observe import metrics
from nodefence.agent.probes.peer_client import run_probe
from nodefence.agent.probes.peers import (
    ProbeRequest,
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
)
from nodefence.agent.probes.signing import check_request, sign_result, sign_result_own

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


@dataclass(frozen=True)
class Answering:
    """How this node takes requests and signs answers."""

    node: str
    signer: NodeSigner | None  # its own key (None: signatures off, or an old-style node)
    legacy: bytes | None  # its key derived from the old cluster key (the upgrade only)
    required: bool  # refuse requests not signed for it
    max_skew: float
    timeout: float  # each probe's

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        node: str,
        signer: NodeSigner | None,
        legacy: bytes | None,
        timeout: float,
    ) -> Answering:
        """As `cfg.auth` says (see the module doc)."""
        required = cfg.auth.mode == "required" and signer is not None and legacy is None
        return cls(node, signer, legacy, required, cfg.auth.max_skew, timeout)

    def refusal(self, req: ProbeRequest) -> str | None:
        """Why this node must not take `req` up (a metric label), or None."""
        if self.signer is None:
            return None
        why = check_request(
            req,
            self.node,
            self.signer.keys,
            required=self.required,
            wall_now=time.time(),
            max_skew=self.max_skew,
        )
        return None if why is None else why.value

    def answer(self, req: ProbeRequest, reachable: bool) -> ProbeResult:
        """The signed answer to `req`."""
        res = ProbeResult(req.id, self.node, req.suspect, reachable, ts=int(time.time() * 1000))
        if self.signer is not None:
            res = sign_result_own(res, self.signer.key)
        if self.legacy is not None:
            res = sign_result(res, self.legacy)
        return res


async def answer_probes(cfg: AgentConfig, answering: Answering, stop: asyncio.Event) -> None:
    """Probe suspects when the leader names this node as a peer, over every broker, until
    `stop`; see the module doc."""
    taken = _Taken()
    async with asyncio.TaskGroup() as tg:
        for broker in cfg.brokers:
            tg.create_task(_answer_on(broker, cfg.cluster, answering, taken, stop))


async def _answer_on(
    broker: BrokerConfig,
    cluster: str,
    answering: Answering,
    taken: _Taken,
    stop: asyncio.Event,
) -> None:
    node = answering.node
    while not stop.is_set():
        try:
            async with make_client(broker, f"nodefence-probe-{node}") as client:
                await client.subscribe(probe_filter(cluster), qos=0)
                reading = asyncio.ensure_future(_answer(client, cluster, answering, taken))
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
    client: aiomqtt.Client, cluster: str, answering: Answering, taken: _Taken
) -> None:
    node = answering.node
    async for message in client.messages:
        payload = message.payload
        if not isinstance(payload, bytes):
            continue
        req = decode_request(payload)
        if req is None or node not in req.peers or req.suspect == node:
            continue
        why = answering.refusal(req)
        if why is not None:
            metrics.REJECTED.labels(why).inc()
            log.debug("probe request %s refused: %s", req.id, why)
            continue
        if not taken.first(req):
            continue
        reachable = await run_probe(req, answering.timeout)
        res = answering.answer(req, reachable)
        await client.publish(result_topic(cluster, node), encode_result(res))
