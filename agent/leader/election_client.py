"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.

- Acquire: every `retry_period` read the Lease; take it when it is absent, ours, or expired.
  Expiry is judged on OUR monotonic clock: a Lease is expired when its record (resourceVersion)
  has not changed for `lease_duration` since we first saw that record, so the other holder's
  and the API server's clocks are never trusted.
- Concurrency: updates carry the resourceVersion we read; a 409 means someone else won.
- Renew: every `retry_period`; if no renewal succeeded for `renew_deadline`, leadership is lost
  at once: the leader task is cancelled before any other candidate can take the Lease (which
  needs `lease_duration` > `renew_deadline` of silence).
- Release: on a clean stop the Lease is handed back (holder cleared, duration 1 s) so a
  successor takes over at once.
- Defer (`defer()` true: this node is in maintenance, see `nodefence.agent.leader.handoff`): a
  leader hands the Lease back once, and a free or expired Lease is taken only after it stayed so for
  a whole
  `lease_duration`, so any other candidate goes first but leadership is never lost for want of
  one.
- Warm standbys: the leader names a few nodes on its Lease (`standbys`, an annotation); their
  agents keep a heartbeat history (`nodefence.agent.leader.ingest_loop`) and read the Lease every
  `retry_period`. With `cold_retry_period` set, every other candidate is cold: it reads the Lease
  only every
  `cold_retry_period` and takes it only once it stayed unrenewed a further `lease_duration`,
  so a live warm standby always wins the race (and the API server is read far less often).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from nodefence.agent.kube.client import ClusterApi, ClusterError, Conflict, LeaseInfo
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.election")

LeaderTask = Callable[[], Coroutine[Any, Any, None]]


class NotLeader(Exception):
    """This process does not (or no longer) hold the leader Lease."""


@dataclass(frozen=True)
class ElectionTiming:
    """Lease timing in seconds (the agent's defaults, chosen for a fast takeover).

    `cold_retry_period`: how often a cold candidate reads the Lease (see the module doc); None:
    every candidate reads it every `retry_period` and none yields, as in client-go.
    """

    lease_duration: float = 5.0
    renew_deadline: float = 3.0
    retry_period: float = 1.0
    cold_retry_period: float | None = None


class LeaderElector:
    """Campaigns for the Lease and runs `lead()` while holding it."""

    def __init__(
        self,
        api: ClusterApi,
        namespace: str,
        name: str,
        identity: str,
        timing: ElectionTiming = ElectionTiming(),
        clock: Callable[[], float] = time.monotonic,
        defer: Callable[[], bool] = lambda: False,
        node: str | None = None,
    ) -> None:
        self.api = api
        self.defer = defer
        self._handed_off = False  # released once for the current maintenance mark
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.node = node  # the name warm standbys are listed by
        self.timing = timing
        self._clock = clock
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when first seen)
        self._lease: LeaseInfo | None = None
        self._last_renew: float | None = None
        self.leader_since: float | None = None
        self.observed_holder: str | None = None
        self.standbys: tuple[str, ...] = ()  # what this leader writes on its Lease
        self.observed_standbys: tuple[str, ...] = ()  # what the Lease said when last read
        # The pause annotation (nodefence.agent.fencing.pause) as last read: kept on every write of
        # ours, so a renewal never drops what an operator set; a write accepted after it was set saw
        # it.
        self.observed_paused = ""
        # confirm() and the renew loop must not race each other into a self-inflicted 409.
        self._io = asyncio.Lock()
        self._pause: _Pauses  # set by `run`, for its own waits and `_lead`'s

    @property
    def is_leader(self) -> bool:
        """True while a renewal succeeded within `renew_deadline`."""
        return (
            self._last_renew is not None
            and self._clock() - self._last_renew < self.timing.renew_deadline
        )

    def lease_generation(self) -> dict[str, object] | None:
        """The Lease as this process last wrote it: its generation (`leaseTransitions`) and
        resourceVersion; None when it holds none (for the fence evidence)."""
        lease = self._lease
        if lease is None:
            return None
        return {
            "leaseGeneration": lease.transitions,
            "leaseResourceVersion": lease.resource_version,
        }

    @property
    def is_standby(self) -> bool:
        """True while the Lease names this node a warm standby (and it does not lead)."""
        return not self.is_leader and self.node is not None and self.node in self.observed_standbys

    def _cold(self, standbys: tuple[str, ...]) -> bool:
        """A cold candidate: warm standbys are named, this node is not among them."""
        return (
            self.timing.cold_retry_period is not None
            and bool(standbys)
            and self.node not in standbys
        )

    def _period(self) -> float:
        cold = self.timing.cold_retry_period
        if cold is not None and self._cold(self.observed_standbys):
            return cold
        return self.timing.retry_period

    async def confirm(self) -> None:
        """Renew the Lease now; raise `NotLeader` unless it is still ours (use before every
        irreversible step)."""
        if not self.is_leader or not await self._try_acquire_or_renew():
            raise NotLeader(f"{self.identity} does not hold lease {self.namespace}/{self.name}")

    async def run(self, lead: LeaderTask, stop: asyncio.Event) -> None:
        """Campaign until `stop`; run `lead()` in a task while leading, cancel it on loss."""
        self._pause = _Pauses(stop)
        try:
            while not stop.is_set():
                if not self.defer():
                    self._handed_off = False
                if await self._try_acquire_or_renew():
                    await self._lead(lead, stop)
                    if self._handed_off and not stop.is_set():
                        await self._release()
                else:
                    await self._pause.sleep(self._period())
        finally:
            self._pause.close()
            await self._release()

    async def _lead(self, lead: LeaderTask, stop: asyncio.Event) -> None:
        if not self.is_leader:
            # Acquired, then stalled (a pause, a starved loop) for longer than the renew
            # deadline: another candidate may hold the Lease by now. Campaign again instead.
            log.warning("not leading: the Lease was acquired too long ago to be trusted")
            return
        self.leader_since = self._clock()
        log.info("became leader", extra={"identity": self.identity})
        metrics.IS_LEADER.set(1)
        task = asyncio.create_task(lead(), name="leader-side")
        try:
            while not stop.is_set():
                if task.done():
                    task.result()  # a crashed leader side must surface, not linger
                    return
                await self._pause.sleep(self.timing.retry_period)
                if stop.is_set():
                    break
                # A hung API server must not stretch a renewal past the renew deadline: the
                # leader side has to stop before anyone else may take the Lease.
                left = self.timing.renew_deadline - (self._clock() - (self._last_renew or 0.0))
                # asyncio.timeout, not wait_for: no task per renewal, and (unlike 3.11's
                # wait_for) it never swallows a cancellation of this task.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, left)):
                        await self._try_acquire_or_renew()
                if not self.is_leader:
                    log.warning(
                        "lost leadership: no renewal for %.1f s", self.timing.renew_deadline
                    )
                    break
                if self.defer() and not self._handed_off:
                    self._handed_off = True
                    log.warning("this node is in maintenance: handing leadership off")
                    break
        finally:
            # Python 3.11's wait_for (used inside aiomqtt) can swallow one cancellation:
            # cancel until the leader side has really stopped.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            self.leader_since = None
            metrics.IS_LEADER.set(0)

    async def _try_acquire_or_renew(self) -> bool:
        async with self._io:
            return await self._try_acquire_or_renew_locked()

    async def _try_acquire_or_renew_locked(self) -> bool:
        now_wall = dt.datetime.now(dt.UTC)
        try:
            lease = await self.api.get_lease(self.namespace, self.name)
        except ClusterError as err:
            log.warning("cannot read lease: %s", err)
            return False
        now = self._clock()
        seconds = max(1, math.ceil(self.timing.lease_duration))
        if lease is None:
            return await self._write(None, now, now_wall, seconds, transitions=0, acquire=now_wall)
        if self._observed is None or self._observed[0] != lease.resource_version:
            self._observed = (lease.resource_version, now)
        self.observed_holder = lease.holder
        self.observed_standbys = lease.standbys
        self.observed_paused = lease.paused
        ours = lease.holder == self.identity
        duration = lease.duration or seconds
        unchanged = now - self._observed[1]
        expired = not lease.holder or unchanged >= duration
        if not ours and self.defer():  # in maintenance: let any other candidate take it first
            expired = unchanged >= max(duration, self.timing.lease_duration)
        elif not ours and self._cold(lease.standbys):
            # Let a warm standby take it first: it reads every retry_period and has the history.
            expired = unchanged >= (duration if lease.holder else 0) + self.timing.lease_duration
        if not ours and not expired:
            return False
        if not ours:
            self.standbys = tuple(n for n in lease.standbys if n != self.node)
        transitions = lease.transitions if ours else lease.transitions + 1
        acquire = lease.acquire_time if ours else now_wall
        return await self._write(
            lease.resource_version, now, now_wall, seconds, transitions, acquire
        )

    async def _write(
        self,
        rv: str | None,
        now: float,
        now_wall: dt.datetime,
        seconds: int,
        transitions: int,
        acquire: dt.datetime | None,
    ) -> bool:
        try:
            lease = await self.api.write_lease(
                self.namespace,
                self.name,
                holder=self.identity,
                duration=seconds,
                renew=now_wall,
                acquire=acquire,
                transitions=transitions,
                resource_version=rv,
                standbys=self.standbys,
                paused=self.observed_paused if rv is not None else "",
            )
        except Conflict:
            return False  # another writer was first: read the Lease again
        except ClusterError as err:
            log.warning("cannot write lease: %s", err)
            return False
        self._lease = lease
        self._observed = (lease.resource_version, now)
        self._last_renew = now
        self.observed_holder = self.identity
        return True

    async def _release(self) -> None:
        lease, self._lease = self._lease, None
        was_leader = self.is_leader
        self._last_renew = None
        if lease is None or not was_leader:
            return
        try:
            await self.api.write_lease(
                self.namespace,
                self.name,
                holder=None,
                duration=1,
                renew=dt.datetime.now(dt.UTC),
                acquire=None,
                transitions=lease.transitions,
                resource_version=lease.resource_version,
                standbys=self.standbys,  # the named standbys take over at once
                paused=self.observed_paused,
            )
            log.info("released the lease", extra={"identity": self.identity})
        except ClusterError as err:
            log.warning("could not release the lease (it will expire): %s", err)


class _Pauses:
    """The elector's waits between Lease reads: `seconds`, or less once `stop` is set. One
    task watches `stop` for all of them; each wait is a timer, so an elapsed wait raises
    nothing (a timeout per wait raised and caught a cancellation every retry period)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._watch: asyncio.Task[Literal[True]] | None = None
        self._waiting: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        """Until `seconds` passed or `stop` is set."""
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        if self._watch is None:
            watch = self._watch = asyncio.ensure_future(self._stop.wait())
            watch.add_done_callback(self._stopped)
        waiting = self._waiting = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._waiting = None

    def _stopped(self, _: object) -> None:
        if self._waiting is not None:
            _wake(self._waiting)

    def close(self) -> None:
        """Stop watching `stop` (the elector's run is over)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
