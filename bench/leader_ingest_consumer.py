"""The consumers of every heartbeat (see ROLES), each in its own process: a bare aiomqtt
subscriber, the same plus LeaderSide's per-heartbeat ingest without judging, and LeaderSide
itself; each prints its counters as a JSON line every 0.1 s."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Any

# The sibling benchmark: the leader's config is the same for both.
from detection_latency_leader import CLUSTER, agent_config, detection_profile, emit
from leader_ingest_load import pinned_keyring

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

    from nodefence.agent.detection.detector import FailureDetector
    from nodefence.agent.heartbeat.codec import (
        HeartbeatRejected,
        SequenceTracker,
        decode_heartbeat,
        heartbeat_filter,
        node_from_topic,
    )
    from nodefence.agent.kube.client import ClusterApi, load_api_client
    from nodefence.agent.leader.side_loop import LeaderSide
    from nodefence.agent.mqtt.client import make_client

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = agent_config(spec["ports"][0], spec["kubeconfig"], "default")
    ports = spec["ports"]
    if len(ports) > 1:  # every broker, as `broker.endpoints` lists them
        brokers = tuple(dataclasses.replace(cfg.broker, port=p) for p in ports)
        cfg = dataclasses.replace(cfg, broker=brokers[0], broker_endpoints=brokers)
    verifier = None
    keyring = None
    if spec.get("key"):
        from nodefence.agent.config.agent_file import AuthConfig
        from nodefence.agent.heartbeat.signing import AuthMode, HeartbeatVerifier

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
