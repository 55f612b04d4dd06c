"""Self-fencing: the node feeds a watchdog device while it is in contact, and the leader's rule
for when a node that could not be powered off may be taken as reset by its watchdog.

Node side. The agent feeds the device (one byte per `feed_interval`) only while
- it had *contact* within `cut_off_after`: a heartbeat of its own came back through the broker
  (stamped with the moment it was sent), or a read of the API server showed no fencing record
  for this node (stamped with the moment the read started), and
- it has never seen a fencing record for itself (the leader decided to fence it).
Both rules latch: once the agent stops feeding it never feeds again, so the watchdog resets the
machine within its `timeout`. A clean stop (SIGTERM) writes the magic 'V' so a rolling update
does not reboot the node. The first feed (which arms the device) waits for the first contact.

Maintenance. A node whose Node carries `nodefence.io/maintenance=true` (read from the API with
the records) is never fenced, and its network work must not reset it. From that read on its
heartbeats advertise no armed watchdog; once one of them came back through the broker (so the
leader has it too, by the argument below) the cut-off rule no longer applies, and the node feeds
without contact until a read shows the mark gone (that read is also contact). A fencing record
still stops feeding. The leader never counts a watchdog proof for a node whose last heartbeat
advertised no armed watchdog, nor for a node it sees in maintenance.

Leader side (`self_fence_verdict`, pure). Let M be the moment the leader stored the fencing
record (for a resumed operation: the moment this leader took it over). Any contact the node
stamps at or after M shows it the record (API reads), or reaches the leader as a heartbeat
(broker round trips; the leader's own broker connection must have been up all along and no
message on the node's topic refused since its last accepted heartbeat). So without a
heartbeat or kubelet renewal seen after M, the node's last contact is before M, it stopped
feeding by M + cut_off + feed_interval, and was reset by that + timeout. The leader takes the
node as fenced only after that deadline plus a margin, only when every BMC device of the node
was unreachable in the last power walk, and only when the node's last heartbeat said its
watchdog was armed (its `WatchdogClaim`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from agent.heartbeat_codec import WatchdogClaim

log = logging.getLogger("nodefence.watchdog")

KEEPALIVE = b"\0"
MAGIC_CLOSE = b"V"
# linux/watchdog.h: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


# -- node side: when to feed (pure) ------------------------------------------------------------


@dataclass
class FeedPolicy:
    """Whether to feed now; `contact()` and `fenced()` fold in what the agent learns."""

    cut_off: float
    last_contact: float | None = None
    stopped: str = ""  # why feeding stopped for good ("" while feeding is allowed)
    withdrawn_at: float | None = None  # the maintenance mark was read: the claim withdrawn
    exempt: bool = False  # the leader has a heartbeat without the claim: no cut-off

    def contact(self, at: float) -> None:
        """A round trip that started at `at` (monotonic) succeeded and showed no fencing."""
        if self.last_contact is None or at > self.last_contact:
            self.last_contact = at

    def echo(self, sent_at: float) -> None:
        """One of this node's heartbeats, sent at `sent_at`, came back through the broker.

        Contact; and, once the claim was withdrawn before it was sent (heartbeats stamp
        their send time before asking for the claim), proof that the leader received a
        heartbeat without the claim: the cut-off no longer applies."""
        self.contact(sent_at)
        if self.withdrawn_at is not None and sent_at >= self.withdrawn_at:
            self.exempt = True

    def maintenance(self, marked: bool, now: float) -> None:
        """What a read of this node's Node said about `nodefence.io/maintenance=true`, at
        `now` (after the read)."""
        if marked:
            if self.withdrawn_at is None:
                self.withdrawn_at = now
            return
        self.withdrawn_at = None
        self.exempt = False

    @property
    def claim_withdrawn(self) -> bool:
        """Heartbeats must not advertise an armed watchdog (the node is in maintenance)."""
        return self.withdrawn_at is not None

    def fenced(self, why: str) -> None:
        """The agent learnt the leader is fencing this node: stop feeding for good."""
        if not self.stopped:
            self.stopped = f"fencing record seen: {why}"

    def should_feed(self, now: float) -> bool:
        """Feed now? Latches to False once cut off (or fenced)."""
        if self.stopped:
            return False
        if self.last_contact is None:
            return False  # not armed yet: the first contact arms the device
        if self.exempt:
            return True  # in maintenance, and the leader knows the claim is withdrawn
        silent = now - self.last_contact
        if silent > self.cut_off:
            self.stopped = f"no broker or API server contact for {silent:.1f} s"
            return False
        return True


def clean_stop_disarms(policy: FeedPolicy, now: float, announced: bool) -> bool:
    """May a clean stop disarm the watchdog? Only while the node is still in contact and has
    seen no fencing record of its own (a cut-off node must reset even if its agent stops), and
    once its `stopped` status was acknowledged (so the leader knows the claim is void)."""
    return announced and policy.should_feed(now)


# -- leader side: may a self-fence count as proof? (pure) --------------------------------------


@dataclass(frozen=True)
class SelfFenceFacts:
    """What the leader knows about a node it could not power off (leader monotonic clock)."""

    now: float
    marked_at: float  # the fencing record was stored (or taken over) by this leader
    decided_at: float  # this leader declared the node dead
    max_claim_age: float  # the armed heartbeat may be at most this much older than decided_at
    frozen: bool  # a leader-wide guard (storm, broker down, new leader) holds decisions
    margin: float
    claim: WatchdogClaim | None  # from the node's last accepted heartbeat
    last_heartbeat: float | None
    last_rejected: float | None  # last refused message on the node's heartbeat topic
    broker_up_since: float | None  # the leader's ingest connection, None while down
    alive_after_mark: str | None  # evidence of life after marked_at (heartbeat, kubelet)
    bmc_unreachable: bool  # every device of the node unreachable in the last power walk
    in_maintenance: bool = False  # the leader sees the node marked for maintenance


def self_fence_deadline(claim: WatchdogClaim, marked_at: float, margin: float) -> float:
    """When the node has provably been reset by its watchdog (leader clock)."""
    return marked_at + claim.cut_off + claim.feed_interval + claim.timeout + margin


def self_fence_verdict(f: SelfFenceFacts) -> tuple[bool, str]:
    """(True, why) when the node may be treated as fenced; (False, what is missing)."""
    if not f.bmc_unreachable:
        return False, "its BMC answered (only an unreachable BMC allows a self-fence)"
    if f.frozen:
        return False, "decisions are frozen (storm guard, broker down or new leader)"
    if f.in_maintenance:
        return False, "it is in maintenance: its agent may feed its watchdog without contact"
    if f.claim is None or f.last_heartbeat is None:
        return False, "its last heartbeat did not report an armed watchdog"
    if f.decided_at - f.last_heartbeat > f.max_claim_age:
        return False, (
            f"its last armed heartbeat came {f.decided_at - f.last_heartbeat:.1f} s before the"
            f" fence decision (at most {f.max_claim_age:g} s): it may have been disarmed since"
        )
    if f.alive_after_mark:
        return False, f"it showed life after the fence decision ({f.alive_after_mark})"
    if f.broker_up_since is None or f.broker_up_since > f.last_heartbeat:
        return False, "the leader's broker connection was not up since the node's last heartbeat"
    if f.last_rejected is not None and f.last_rejected >= f.last_heartbeat:
        return False, "messages on its heartbeat topic were refused since its last heartbeat"
    deadline = self_fence_deadline(f.claim, f.marked_at, f.margin)
    if f.now < deadline:
        return False, f"its watchdog deadline is {deadline - f.now:.1f} s away"
    c = f.claim
    return True, (
        f"watchdog self-fence: no contact since the fence decision; cut_off {c.cut_off:g} s"
        f" + feed {c.feed_interval:g} s + watchdog timeout {c.timeout:g} s"
        f" + margin {f.margin:g} s have passed"
    )


# -- node side: I/O ------------------------------------------------------------------------------


class WatchdogDeviceError(Exception):
    """The watchdog device cannot be opened or written (the message names it)."""


Announce = Callable[[], Awaitable[bool]]


async def _not_announced() -> bool:
    return False


class WatchdogFeeder:
    """Feeds `device` while `policy` allows; see the module doc.

    `read_timeout`: at arming, set the configured timeout on the device and advertise what the
    driver read back (drivers round and cap it); False only for an emulated device without
    ioctls. `announce()`: on a clean stop, publish that this boot's watchdog is disarmed and
    return True once the broker acknowledged it; only then is the device disarmed."""

    def __init__(
        self,
        device: str,
        policy: FeedPolicy,
        claim: WatchdogClaim,
        clock: Callable[[], float] = time.monotonic,
        *,
        read_timeout: bool = True,
        announce: Announce = _not_announced,
    ) -> None:
        self.device = device
        self.policy = policy
        self._claim = claim
        self.clock = clock
        self.read_timeout = read_timeout
        self.announce = announce
        self._fd: int | None = None
        self.feeds = 0
        self.stop_reason = ""
        self.disarmed = False

    def armed_claim(self) -> WatchdogClaim | None:
        """What heartbeats advertise: the claim while the device is armed and fed."""
        if self._fd is None or self.policy.stopped or self.policy.claim_withdrawn:
            return None
        return self._claim

    def _open(self) -> None:
        try:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            no_reader = err.errno == errno.ENXIO
            hint = " (no reader: is the watchdog driver loaded?)" if no_reader else ""
            raise WatchdogDeviceError(
                f"cannot open watchdog device {self.device}: {err.strerror}{hint}"
            ) from None
        if self.read_timeout:
            self._claim = replace(self._claim, timeout=self._device_timeout())
        log.warning("watchdog %s armed (timeout %g s)", self.device, self._claim.timeout)

    def _device_timeout(self) -> float:
        """Set the configured timeout and read back the one the driver applies."""
        assert self._fd is not None
        wanted = max(1, math.ceil(self._claim.timeout))
        try:
            with contextlib.suppress(OSError):  # some drivers have a fixed timeout
                fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", wanted))
            got = struct.unpack("i", fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, b"\0" * 4))[0]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.write(self._fd, MAGIC_CLOSE)  # opening armed it: do not leave it running
            os.close(self._fd)
            self._fd = None
            raise WatchdogDeviceError(
                f"cannot read the timeout of watchdog device {self.device}: {err.strerror}"
                " (not a watchdog driver? watchdog.timeout_from: config is for emulators only)"
            ) from None
        if got <= 0:
            raise WatchdogDeviceError(f"watchdog device {self.device} reports timeout {got}")
        if got != wanted:
            log.warning(
                "watchdog %s: asked for a %d s timeout, the driver applies %d s (advertised)",
                self.device,
                wanted,
                got,
            )
        return float(got)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            os.write(self._fd, data)
        except OSError as err:
            raise WatchdogDeviceError(
                f"cannot write watchdog device {self.device}: {err.strerror}"
            ) from None

    def tick(self) -> bool:
        """Feed once if allowed (arming the device at the first feed); False once stopped."""
        if not self.policy.should_feed(self.clock()):
            if self.policy.stopped and not self.stop_reason:
                self.stop_reason = self.policy.stopped
                log.critical(
                    "self-fencing: stopped feeding the watchdog (%s); the node resets within %g s",
                    self.stop_reason,
                    self._claim.timeout,
                )
            return not self.policy.stopped
        if self._fd is None:
            self._open()
        self._write(KEEPALIVE)
        self.feeds += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Feed every `feed_interval` until `stop` or until feeding stops for good.

        A clean stop disarms the device only when the node is still in contact and has seen no
        fencing record (a cut-off node's watchdog must fire even if its agent is stopped) and
        once the leader can know it (`announce()` acknowledged); otherwise the device stays
        armed and resets the node within its timeout."""
        try:
            while not stop.is_set():
                if not self.tick():
                    await stop.wait()  # never feed again; keep the device open
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._claim.feed_interval)
            if self._fd is not None:
                await self._clean_stop()
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    async def _clean_stop(self) -> None:
        if not self.policy.should_feed(self.clock()):
            log.critical(
                "clean stop while cut off or fenced (%s): the watchdog stays armed and resets"
                " the node within %g s",
                self.policy.stopped or "not armed",
                self._claim.timeout,
            )
            return
        self._write(KEEPALIVE)  # a full timeout for the announcement
        try:
            announced = await self.announce()
        except Exception as err:  # any failure means the leader may not know
            log.warning("could not announce the clean stop: %s", err)
            announced = False
        if not clean_stop_disarms(self.policy, self.clock(), announced):
            log.critical(
                "clean stop not acknowledged by the broker: the watchdog stays armed (the"
                " leader may still count on it) and resets the node within %g s",
                self._claim.timeout,
            )
            return
        self._write(MAGIC_CLOSE)
        self.disarmed = True
        log.info("watchdog %s disarmed (clean stop, announced)", self.device)


ListMarks = Callable[[], Awaitable[list[str]]]
ReadMark = Callable[[], Awaitable[bool]]


class SeenMarks(Protocol):
    """The agent's watches of its own records and Node (`agent.node_watch.NodeWatch`)."""

    def open_marks(self) -> list[str]:
        """Open fencing records of this node the watch has seen."""
        ...

    def maintenance(self) -> bool | None:
        """The Node's `nodefence.io/maintenance=true`, None until the Node was listed."""
        ...

    def subscribe(self) -> asyncio.Event:
        """An event set at every change."""
        ...


async def wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of `events` is set, or `timeout` seconds passed."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # No await here: a coroutine closed unfinished (its task collected when a loop ends)
        # must not suspend again; a cancelled `Event.wait` needs no one to collect it.
        for w in waits:
            w.cancel()


async def _not_marked() -> bool:
    return False


def _apply_mark(policy: FeedPolicy, marked: bool, now: float) -> None:
    was = policy.claim_withdrawn
    policy.maintenance(marked, now)
    if policy.claim_withdrawn != was:
        log.warning(
            "node %s maintenance: %s",
            "in" if marked else "out of",
            "its watchdog claim is withdrawn; once the leader has heard so, long"
            " network work does not reset it"
            if marked
            else "the watchdog guards it again",
        )


async def watch_marks(
    list_marks: ListMarks,
    policy: FeedPolicy,
    interval: float,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    read_mark: ReadMark | None = None,
    seen: SeenMarks | None = None,
) -> None:
    """Stop feeding once a fencing record names this node; keep `policy` in contact through
    the API server while the broker gives none.

    `list_marks()` reads the names of unfinished fencing records of this node from the API
    (raising on any failure); an empty answer is contact, stamped with the moment the read
    started. With `seen` (the agent's watches): a record the watch shows stops feeding at once,
    the maintenance mark is the watched Node's, and the API is read only while no heartbeat
    echo gave contact for `interval` (a watch that says nothing proves nothing: the reads stay
    the contact). Without it: the records are read every `interval`, with (`read_mark`) the
    Node's maintenance mark, which counts only together with such an answer.
    """
    changed = seen.subscribe() if seen is not None else None
    while not stop.is_set() and not policy.stopped:
        if seen is not None:
            marks = seen.open_marks()
            if marks:
                policy.fenced(", ".join(marks))
                log.critical("the leader is fencing this node (%s)", ", ".join(marks))
                return
            marked = seen.maintenance()
            if marked is not None:
                _apply_mark(policy, marked, clock())
        last = policy.last_contact
        if seen is None or last is None or clock() - last >= interval:
            started = clock()
            try:
                marked = (
                    await asyncio.wait_for((read_mark or _not_marked)(), timeout=interval * 2)
                    if seen is None
                    else None
                )
                marks = await asyncio.wait_for(list_marks(), timeout=interval * 2)
            except Exception as err:  # any failure is "no contact"; the reason is logged
                log.debug("API check failed: %s", err)
            else:
                if marks:
                    policy.fenced(", ".join(sorted(marks)))
                    log.critical("the leader is fencing this node (%s)", ", ".join(marks))
                    return
                policy.contact(started)
                if read_mark is not None and marked is not None:
                    _apply_mark(policy, marked, clock())
        if changed is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        else:
            await wait_any((stop, changed), interval)
            changed.clear()
