"""Warm standbys: which agents keep a heartbeat history, so a new leader need not start blind.

The leader names `kubernetes.standbys` nodes on its Lease (`choose_standbys`, pure: the named
ones stay while they are healthy, the free places go to other healthy nodes in a fixed
order). Their agents run a `nodefence.agent.leader.ingest_loop.Listener` (sessions to every broker,
the detector) without acting on it, and read the Lease every `retry_period`; every other agent is a
cold candidate (`nodefence.agent.leader.election_client`). `WarmListener` runs the listener while
this agent is a named standby or leads, and hands it to the leader side when this agent takes the
Lease: the new leader judges at once the nodes its standby self has heard for a full window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable

from nodefence.agent.leader.ingest_loop import Listener
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.standby")


def _spread(node: str) -> bytes:
    """A fixed order unrelated to names, so standbys do not all land on node-1, node-2."""
    return hashlib.sha256(node.encode()).digest()


def choose_standbys(
    previous: Iterable[str], healthy: Iterable[str], leader: str, count: int
) -> tuple[str, ...]:
    """The nodes to name warm standbys: at most `count`, healthy, never `leader`; those named
    before stay (in their order) while healthy, so a standby keeps its history; the free places
    go to the other healthy nodes in `_spread` order."""
    fit = set(healthy) - {leader}
    kept = [n for n in dict.fromkeys(previous) if n in fit][:count]
    others = sorted(fit - set(kept), key=_spread)
    return tuple(kept + others[: max(0, count - len(kept))])


class WarmListener:
    """Runs a listener while this agent is a named standby (`standby()`) or leads
    (`leading()`); checks every `period` seconds."""

    def __init__(
        self,
        make: Callable[[], Listener],
        standby: Callable[[], bool],
        leading: Callable[[], bool],
        period: float,
    ) -> None:
        self.make = make
        self.standby = standby
        self.leading = leading
        self.period = period
        self.listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None

    def take(self) -> Listener:
        """The running listener (warm), or a new one started now (cold) for a new leader."""
        if self.listener is None or self._task is None or self._task.done():
            self._start()
        assert self.listener is not None
        return self.listener

    def _start(self) -> None:
        self.listener = self.make()
        self._task = asyncio.create_task(self.listener.run(), name="warm-listener")

    async def _stop(self) -> None:
        task, self._task, self.listener = self._task, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, stop: asyncio.Event) -> None:
        """Start and stop the listener as `wanted()` changes, until `stop`."""
        try:
            while not stop.is_set():
                standby = self.standby()
                wanted = standby or self.leading()
                if wanted and (self._task is None or self._task.done()):
                    if self._task is not None:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            self._task.result()  # a crashed listener: start a fresh one
                    log.info("warm standby: listening to every broker")
                    self._start()
                elif not wanted and self._task is not None:
                    log.info("no longer a warm standby: listener stopped")
                    await self._stop()
                metrics.IS_STANDBY.set(1 if standby else 0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.period)
        finally:
            await self._stop()
