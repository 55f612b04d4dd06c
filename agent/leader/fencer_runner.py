"""`nodefence fencer`: a leader candidate (the fencer Deployment, two or three replicas).

Every fencer listens to every broker all the time (a warm standby: the history a new leader
judges with), keeps the pinned node keys in step with the store, says it is there
(`nodefence.agent.leader.fencer_presence_client`, so the leader names it a standby on the Lease) and
campaigns for the Lease; the one holding it judges, fences and recovers
(`nodefence.agent.leader.candidate_runner.leader_candidate`). Only fencers hold the BMC inventory,
the fencer key (with which every node's key is agreed) and the rights to taint and delete Nodes,
release pods and VolumeAttachments and write FenceOperations.

A fencer learns the node it runs on from `NODE_NAME` (its Lease identity is `<node>_<id>`, and
`nodefence maintenance enter` on that node hands leadership off, `nodefence.agent.leader.handoff`);
without it, from `POD_NAME` or the host name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.config.inventory_watch import InventoryWatcher
from nodefence.agent.config.key_files import fencer_keyring
from nodefence.agent.heartbeat.key_pins_client import PinSync
from nodefence.agent.kube.client import ClusterApi, ClusterError, load_api_client
from nodefence.agent.leader.candidate_runner import (
    detection_profile,
    leader_candidate,
    leader_identity,
)
from nodefence.agent.leader.election_client import LeaderElector
from nodefence.agent.leader.fencer_presence_client import announce
from nodefence.agent.leader.ingest_loop import Listener
from nodefence.agent.leader.standby_loop import WarmListener
from nodefence.agent.node.health_server import HealthServer
from nodefence.agent.node.self_watch import NodeWatch
from nodefence.agent.observe import metrics
from nodefence.backends.ipmi.backend import prestart_workers

log = logging.getLogger("nodefence.fencer")


def fencer_node() -> str:
    """The node this fencer runs on (see the module doc)."""
    return os.environ.get("NODE_NAME") or os.environ.get("POD_NAME") or socket.gethostname()


async def run_fencer(cfg: AgentConfig, node: str, stop: asyncio.Event) -> None:
    """Run one fencer until `stop` is set (raises `ConfigError` for an unusable key)."""
    profile = detection_profile(cfg)
    keyring = fencer_keyring(cfg)
    api = ClusterApi(load_api_client(cfg.kube.kubeconfig))
    k = cfg.kube
    identity = leader_identity(node)
    # Its own Node, watched: the maintenance mark hands leadership off
    # (nodefence.agent.leader.handoff).
    own_mark = NodeWatch(api, k.namespace, node, records=False, clock=time.monotonic)
    pins = PinSync(keyring, api, k.namespace, identity) if keyring is not None else None
    pending_events: set[asyncio.Task[None]] = set()

    def inventory_rejected(problem: str) -> None:
        # Called from the leader's loop when a changed inventory file does not validate.
        async def report() -> None:
            try:
                await api.lease_event(
                    k.namespace,
                    k.lease_name,
                    "InventoryRejected",
                    f"new BMC inventory rejected, keeping the previous one: {problem}",
                )
            except ClusterError as err:
                log.warning("cannot record the InventoryRejected event: %s", err)

        with contextlib.suppress(RuntimeError):  # no running loop: at start, already logged
            task = asyncio.get_running_loop().create_task(report())
            pending_events.add(task)
            task.add_done_callback(pending_events.discard)

    watcher = (
        InventoryWatcher(cfg.inventory, on_rejected=inventory_rejected) if cfg.inventory else None
    )

    def make_warm(elector: LeaderElector) -> WarmListener:
        def listener() -> Listener:
            if cfg.inventory:
                # A standby may lead (and fence) any moment: have IPMI workers ready, as a leader.
                prestart_workers()
            return Listener.from_config(cfg, profile, elector.identity, keyring)

        # Every fencer listens all the time: two or three of them, each a warm standby.
        return WarmListener(
            listener,
            standby=lambda: not elector.is_leader,
            leading=lambda: elector.is_leader,
            period=k.retry_period,
        )

    candidate = leader_candidate(
        cfg,
        profile,
        api,
        node,
        inventory=watcher,
        identity=identity,
        defer=own_mark.marked,
        warm=make_warm,
        keyring=keyring,
        pins=pins,
        every_candidate_warm=True,
    )
    warm = candidate.warm
    health = HealthServer(
        cfg.health_host,
        cfg.health_port,
        info=lambda: {
            "fencer": identity,
            "node": node,
            "leader": candidate.elector.is_leader,
            "pinsLoaded": pins is None or pins.loaded.is_set(),
        },
        # Ready once it hears a broker (its history is building): a rollout of the fencers
        # then waits for each new one to be a warm standby before it stops the next.
        ready=lambda: bool(warm and warm.listener and warm.listener.brokers.up()),
    )
    await health.start()
    metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port)
    log.info(
        "fencer %s on node %s: cluster %s, brokers %s, inventory %s, metrics on port %d",
        identity,
        node,
        cfg.cluster,
        ", ".join(b.address for b in cfg.brokers),
        cfg.inventory or "none (detect and report only)",
        metrics_port,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(candidate.run(stop))
            watching = tg.create_task(own_mark.run())
            tg.create_task(announce(cfg.brokers, cfg.cluster, node, identity, stop))
            await stop.wait()
            watching.cancel()  # the watch runs until the fencer stops
    finally:
        await health.stop()
