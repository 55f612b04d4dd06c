"""What an agent watches of the API about itself: its own Node and its own fencing records.

Two informers (`nodefence.agent.kube.informer_loop`) with selectors, so an agent costs the API
server two watches instead of a read of its Node every two seconds and a list of its records every
few seconds (thousands of requests a second on a cluster of thousands of nodes):
- its Node (`fieldSelector=metadata.name=<node>`): the maintenance mark, which hands leadership
  off (`marked`, the elector's `defer`, see `nodefence.agent.leader.handoff`) and withdraws the
  watchdog claim; and the health-endpoint annotation, written when the Node lacks it (`announce`),
  not on a period;
- with a watchdog, its FenceOperations (`labelSelector=nodefence.io/node=<node>`): an open one
  stops the feeding at once (`nodefence.agent.node.marks_watch.watch_marks`). A watch is no proof
  that nothing was written since it last spoke, so the contact that keeps the watchdog fed without a
  broker still comes from reads of the API (`unfinished_marks`), made when no heartbeat echo did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from nodefence.agent.fencing.records import from_record, is_open_mark
from nodefence.agent.kube.cache_watch import records_kind
from nodefence.agent.kube.client import ClusterError, NodeInfo
from nodefence.agent.kube.informer_loop import Change, Informer, Kind, Source
from nodefence.agent.kube.json_codec import node_info
from nodefence.agent.kube.node_label import NODE_LABEL, node_selector
from nodefence.agent.kube.watch_client import Collection
from nodefence.agent.node.marks_watch import wait_any

log = logging.getLogger("nodefence.agent")


def open_mark_names(records: Iterable[Mapping[str, Any]], node: str) -> list[str]:
    """Names of the records that tell `node` it is being fenced (`records.is_open_mark`); the
    label only narrows a list, the full name in `spec.nodeName` decides."""
    found = []
    for r in records:
        if (r.get("spec") or {}).get("nodeName") != node:
            continue
        try:
            if is_open_mark(from_record(dict(r))):
                found.append(str((r.get("metadata") or {}).get("name")))
        except (KeyError, ValueError):
            # Unreadable, yet it names this node: the leader may be fencing it.
            found.append(str((r.get("metadata") or {}).get("name")))
    return sorted(found)


class NodeWatch:
    """The agent's watches of its own Node and (with `records`) its fencing records."""

    def __init__(
        self,
        api: Source,
        namespace: str,
        node: str,
        *,
        records: bool,
        clock: Callable[[], float],
        stall_after: float = 90.0,
    ) -> None:
        self.node = node
        self._subscribers: list[asyncio.Event] = []
        own = Collection("own node", "", "v1", "nodes", field_selector=f"metadata.name={node}")
        self.own: Informer[NodeInfo] = Informer(
            api,
            Kind(own, node_info),
            clock=clock,
            on_change=self._node_changed,
            stall_after=stall_after,
        )
        self.records: Informer[dict[str, Any]] | None = (
            Informer(
                api,
                records_kind(namespace, node_selector(NODE_LABEL, node)),
                clock=clock,
                on_change=self._records_changed,
                stall_after=stall_after,
            )
            if records
            else None
        )
        self._mark = ""

    async def run(self) -> None:
        """Both watches, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.own.run(), name=f"watch node {self.node}")
            if self.records is not None:
                tg.create_task(self.records.run(), name=f"watch records of {self.node}")

    def info(self) -> NodeInfo | None:
        """The Node as last seen (None: not listed yet, or it does not exist)."""
        return self.own.items().get(self.node)

    def marked(self) -> bool:
        """The Node carries the maintenance mark, any value (False until it was seen)."""
        return bool(self._mark)

    def maintenance(self) -> bool | None:
        """`nodefence.io/maintenance=true` on the Node; None until the first list is in."""
        if not self.own.synced.is_set():
            return None
        info = self.info()
        return bool(info and info.maintenance)

    def open_marks(self) -> list[str]:
        """The open fencing records of this node the watch has seen."""
        if self.records is None:
            return []
        return open_mark_names(self.records.items().values(), self.node)

    def _node_changed(
        self, changes: list[Change[NodeInfo]], since: float | None, now: float
    ) -> None:
        info = self.info()
        mark = info.maintenance_mark if info is not None else ""
        if mark != self._mark:
            log.info("node %s: maintenance mark %s", self.node, repr(mark) if mark else "removed")
            self._mark = mark
        self._notify()

    def _records_changed(
        self, changes: list[Change[dict[str, Any]]], since: float | None, now: float
    ) -> None:
        self._notify()

    def subscribe(self) -> asyncio.Event:
        """An event set at every change of the Node or the records (its reader clears it)."""
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    def _notify(self) -> None:
        for event in self._subscribers:
            event.set()

    async def announce(
        self,
        write: Callable[[str], Awaitable[None]],
        endpoint: str,
        stop: asyncio.Event,
        *,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        """Keep the Node's health-endpoint annotation at `endpoint`: written (`write`) when
        the watched Node lacks it or says otherwise (a first start, a Node registered again),
        never on a period; a failed write is tried again with backoff."""
        delay = retry_min
        changed = self.subscribe()
        while not stop.is_set():
            changed.clear()
            info = self.info()
            if info is not None and info.health_endpoint != endpoint:
                try:
                    await write(endpoint)
                    delay = retry_min
                    log.info("node %s: health endpoint %s announced", self.node, endpoint)
                except ClusterError as err:
                    log.warning("cannot announce the health endpoint on %s: %s", self.node, err)
                    await wait_any((stop,), delay)
                    delay = min(retry_max, delay * 2)
                    continue
            if self.info() is info:  # nothing changed while writing: wait for the next change
                await wait_any((stop, changed), retry_max)
