"""Self-fencing: when the node feeds its watchdog, when the leader may count a self-fence, and
the agent's feeder writing to the emulated watchdog device (a real FIFO read by hwsim)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from nodefence.agent.heartbeat.codec import WatchdogClaim
from nodefence.agent.node.marks_watch import watch_marks
from nodefence.agent.node.watchdog_loop import WatchdogDeviceError, WatchdogFeeder
from nodefence.agent.node.watchdog_rules import (
    FeedPolicy,
    SelfFenceFacts,
    self_fence_deadline,
    self_fence_verdict,
)
from nodefence.hwsim.watchdog import EmulatedWatchdog
from tests.support.wait import eventually

CLAIM = WatchdogClaim(timeout=10.0, cut_off=6.0, feed_interval=1.0)
EMULATED: dict[str, bool] = {"read_timeout": False}  # the emulated device is a FIFO: no ioctls
MARK = 100.0
DEADLINE = MARK + 6 + 1 + 10 + 2  # cut_off + feed + timeout + margin

OK = SelfFenceFacts(
    now=DEADLINE,
    marked_at=MARK,
    decided_at=MARK - 0.2,
    max_claim_age=12.0,
    frozen=False,
    margin=2.0,
    claim=CLAIM,
    last_heartbeat=90.0,
    last_rejected=None,
    broker_up_since=10.0,
    alive_after_mark=None,
    bmc_unreachable=True,
)


# -- the leader's rule -----------------------------------------------------------------------


def test_the_deadline_adds_cut_off_feed_interval_timeout_and_margin_to_the_mark() -> None:
    assert self_fence_deadline(CLAIM, MARK, 2.0) == DEADLINE


def test_a_self_fence_counts_once_every_condition_holds_and_the_deadline_passed() -> None:
    ok, why = self_fence_verdict(OK)
    assert ok and "watchdog self-fence" in why


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        ({"now": DEADLINE - 0.01}, "deadline"),
        ({"bmc_unreachable": False}, "BMC answered"),
        ({"claim": None}, "armed watchdog"),
        ({"last_heartbeat": None}, "armed watchdog"),
        ({"alive_after_mark": "heartbeat received 0.5 s ago"}, "showed life"),
        ({"broker_up_since": None}, "broker connection"),
        ({"broker_up_since": 95.0}, "broker connection"),  # came up after the last heartbeat
        ({"last_rejected": 92.0}, "refused"),
        ({"frozen": True}, "frozen"),
        ({"last_heartbeat": MARK - 0.2 - 12.01}, "may have been disarmed since"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_each_missing_condition_keeps_the_node_unfenced(
    change: dict[str, object], missing: str
) -> None:
    ok, why = self_fence_verdict(replace(OK, **change))  # type: ignore[arg-type]
    assert not ok
    assert missing in why


def test_a_refusal_before_the_last_good_heartbeat_does_not_matter() -> None:
    assert self_fence_verdict(replace(OK, last_rejected=80.0))[0]


def test_an_armed_claim_older_than_the_heartbeat_window_proves_nothing() -> None:
    # The agent stopped (its watchdog possibly disarmed) long before the node was judged dead:
    # e.g. agent lost for a while, then the node was cut off too.
    old = replace(OK, last_heartbeat=20.0, decided_at=MARK - 0.2)
    ok, why = self_fence_verdict(old)
    assert not ok and "may have been disarmed since" in why
    assert self_fence_verdict(replace(OK, last_heartbeat=MARK - 0.2 - 12.0))[0]  # at the edge


def test_no_watchdog_proof_while_decisions_are_frozen() -> None:
    ok, why = self_fence_verdict(replace(OK, frozen=True))
    assert not ok and "frozen" in why


# -- the node's rule ---------------------------------------------------------------------------


def test_feeding_waits_for_the_first_contact_and_latches_off_after_the_cut_off() -> None:
    p = FeedPolicy(cut_off=5.0)
    assert not p.should_feed(0.0)  # not armed before any contact
    p.contact(1.0)
    assert p.should_feed(6.0)
    p.contact(0.5)  # an older round trip never moves contact back
    assert p.last_contact == 1.0
    assert not p.should_feed(6.01)
    assert "no broker or API server contact" in p.stopped
    p.contact(7.0)  # too late: the decision to reset is final
    assert not p.should_feed(7.0)


def test_a_fencing_record_stops_feeding_for_good() -> None:
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.fenced("fence-n1-abc")
    assert not p.should_feed(1.5)
    assert "fence-n1-abc" in p.stopped


async def test_the_mark_watcher_counts_empty_answers_as_contact_and_stops_on_a_record() -> None:
    p = FeedPolicy(cut_off=5.0)
    answers: list[list[str] | Exception] = [[], RuntimeError("api down"), ["fence-n1-x"]]
    t = iter([10.0, 11.0, 12.0, 13.0])

    async def marks() -> list[str]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    await asyncio.wait_for(watch_marks(marks, p, 0.01, asyncio.Event(), lambda: next(t)), 5)
    assert p.last_contact == 10.0  # the failed read counted for nothing
    assert "fence-n1-x" in p.stopped


class _Seen:
    """The agent's own watches, as `watch_marks` reads them (`SeenMarks`)."""

    def __init__(self) -> None:
        self.marks: list[str] = []
        self.events: list[asyncio.Event] = []

    def open_marks(self) -> list[str]:
        return self.marks

    def maintenance(self) -> bool | None:
        return False

    def subscribe(self) -> asyncio.Event:
        self.events.append(asyncio.Event())
        return self.events[-1]

    def change(self, *marks: str) -> None:
        self.marks = list(marks)
        for e in self.events:
            e.set()


async def test_the_mark_watcher_wakes_at_a_change_and_at_stop_without_waiting_its_interval() -> (
    None
):
    seen, stop = _Seen(), asyncio.Event()
    p = FeedPolicy(cut_off=5.0)
    p.contact(time.monotonic())  # the echo gives contact: no API read is due

    async def marks() -> list[str]:
        return []

    before = len(asyncio.all_tasks())
    watch = asyncio.create_task(watch_marks(marks, p, 3600.0, stop, seen=seen))
    await asyncio.sleep(0.05)
    seen.change("fence-n1-x")  # the watch shows a record: feeding stops at once
    await asyncio.wait_for(watch, 5)
    assert "fence-n1-x" in p.stopped
    seen, p = _Seen(), FeedPolicy(cut_off=5.0)
    p.contact(time.monotonic())
    watch = asyncio.create_task(watch_marks(marks, p, 3600.0, stop, seen=seen))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(watch, 5)
    assert not p.stopped
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before  # nothing left waiting on `stop`


# -- the feeder against the emulated device ----------------------------------------------------


async def test_the_feeder_arms_feeds_and_lets_the_device_fire_once_cut_off(
    tmp_path: Path,
) -> None:
    with emulated_device(tmp_path, 0.4) as (dev, fired):
        policy = FeedPolicy(cut_off=0.3)
        claim = WatchdogClaim(0.4, 0.3, 0.05)
        feeder = WatchdogFeeder(str(dev.path), policy, claim, **EMULATED)
        stop = asyncio.Event()
        task = asyncio.create_task(feeder.run(stop))
        await asyncio.sleep(0.2)
        assert not dev.armed and feeder.armed_claim() is None  # no contact yet: not armed
        policy.contact(time.monotonic())
        await eventually("armed", lambda: dev.armed and dev.feeds >= 2)
        assert feeder.armed_claim() == claim
        for _ in range(6):  # keep in contact for longer than timeout: no reset
            policy.contact(time.monotonic())
            await asyncio.sleep(0.1)
        assert not fired
        cut_at = time.monotonic()  # contact lost from here on
        await eventually("the watchdog fired", lambda: fired, timeout=3.0)
        assert fired[0] - cut_at >= 0.4  # not before the device's own timeout
        assert "no broker or API server contact" in feeder.stop_reason
        assert feeder.armed_claim() is None  # heartbeats stop advertising it
        stop.set()
        await asyncio.wait_for(task, 2)
        assert dev.disarms == 0  # a node that decided to reset never disarms


@contextmanager
def emulated_device(
    tmp_path: Path, timeout: float
) -> Iterator[tuple[EmulatedWatchdog, list[float]]]:
    """An emulated watchdog device of `timeout` s, and the times it fired; stopped after."""
    fired: list[float] = []
    dev = EmulatedWatchdog(tmp_path / "watchdog", timeout, lambda: fired.append(time.monotonic()))
    dev.start()
    try:
        yield dev, fired
    finally:
        dev.stop()


async def armed_then_stopped(feeder: WatchdogFeeder, dev: EmulatedWatchdog) -> None:
    """Run `feeder` until it has armed `dev`, then stop it cleanly (within 2 s)."""
    stop = asyncio.Event()
    task = asyncio.create_task(feeder.run(stop))
    await eventually("armed", lambda: dev.armed)
    stop.set()
    await asyncio.wait_for(task, 2)


async def fed_then_stopped(
    dev: EmulatedWatchdog, announce: Callable[[], Awaitable[bool]]
) -> WatchdogFeeder:
    """A feeder of `dev` (0.3 s device timeout, 5 s cut-off, just in contact) that arms it,
    then stops cleanly, telling the leader through `announce`."""
    policy = FeedPolicy(cut_off=5.0)
    policy.contact(time.monotonic())
    feeder = WatchdogFeeder(
        str(dev.path), policy, WatchdogClaim(0.3, 5.0, 0.05), announce=announce, **EMULATED
    )
    await armed_then_stopped(feeder, dev)
    return feeder


async def _announced() -> bool:
    return True


async def _refused() -> bool:
    return False


async def test_a_clean_stop_announced_to_the_leader_disarms_the_device(tmp_path: Path) -> None:
    with emulated_device(tmp_path, 0.3) as (dev, fired):
        feeder = await fed_then_stopped(dev, announce=_announced)
        await eventually("disarmed", lambda: not dev.armed)
        await asyncio.sleep(0.5)
        assert not fired and feeder.disarmed


async def test_a_clean_stop_the_leader_cannot_learn_of_leaves_the_watchdog_armed(
    tmp_path: Path,
) -> None:
    # The leader would still count on this watchdog: disarming silently could make a machine
    # that is still on look self-fenced.
    with emulated_device(tmp_path, 0.3) as (dev, fired):
        feeder = await fed_then_stopped(dev, announce=_refused)
        await eventually("the watchdog fired", lambda: fired, timeout=3.0)
        assert dev.disarms == 0 and not feeder.disarmed


async def test_a_clean_stop_of_a_cut_off_node_never_disarms_its_watchdog(tmp_path: Path) -> None:
    # Cut off for longer than cut_off_after, stopped before a feeding tick noticed: it must
    # reset all the same (the leader counts on it), even if the stop is announced.
    with emulated_device(tmp_path, 0.5) as (dev, fired):
        now = [100.0]
        policy = FeedPolicy(cut_off=2.0)
        policy.contact(100.0)
        feeder = WatchdogFeeder(
            str(dev.path),
            policy,
            WatchdogClaim(0.5, 2.0, 10.0),  # no feeding tick before the stop
            clock=lambda: now[0],
            announce=_announced,
            **EMULATED,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(feeder.run(stop))
        await eventually("armed", lambda: dev.armed)
        now[0] = 102.5  # silent for longer than cut_off_after
        stop.set()
        await asyncio.wait_for(task, 2)
        await eventually("the watchdog fired", lambda: fired, timeout=3.0)
        assert dev.disarms == 0 and not feeder.disarmed


def test_the_advertised_timeout_is_the_one_the_driver_applies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A driver with a 1 s granularity and a 30 s ceiling, asked for 45.5 s.
    import fcntl
    import struct

    from nodefence.agent.node import watchdog_loop as watchdog_feeder

    applied: list[int] = []

    def ioctl(fd: int, request: int, arg: bytes) -> bytes:
        if request == watchdog_feeder.WDIOC_SETTIMEOUT:
            applied.append(min(30, struct.unpack("i", arg)[0]))
            return struct.pack("i", applied[-1])
        assert request == watchdog_feeder.WDIOC_GETTIMEOUT
        return struct.pack("i", applied[-1])

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    device = tmp_path / "dev"
    device.write_bytes(b"")
    policy = FeedPolicy(cut_off=5.0)
    policy.contact(time.monotonic())
    feeder = WatchdogFeeder(str(device), policy, WatchdogClaim(45.5, 5.0, 1.0))
    assert feeder.tick()
    assert applied == [30]
    assert feeder.armed_claim() == WatchdogClaim(30.0, 5.0, 1.0)


async def test_a_device_without_watchdog_ioctls_is_refused_and_left_disarmed(
    tmp_path: Path,
) -> None:
    dev = EmulatedWatchdog(tmp_path / "watchdog", 5.0, lambda: None)
    dev.start()
    try:
        policy = FeedPolicy(cut_off=5.0)
        policy.contact(time.monotonic())
        feeder = WatchdogFeeder(str(dev.path), policy, CLAIM)  # timeout read from the device
        with pytest.raises(WatchdogDeviceError, match="cannot read the timeout"):
            feeder.tick()
        await eventually("disarmed again", lambda: dev.disarms >= 1 and not dev.armed)
    finally:
        dev.stop()


def test_a_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    policy = FeedPolicy(cut_off=5.0)
    policy.contact(time.monotonic())
    feeder = WatchdogFeeder(str(tmp_path / "nope"), policy, CLAIM)
    with pytest.raises(WatchdogDeviceError, match=r"cannot open watchdog device .*nope"):
        feeder.tick()


# -- maintenance (issue 21): long network work must not reset a node in maintenance ----------


def test_a_node_in_maintenance_keeps_feeding_without_contact_once_the_leader_knows() -> None:
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.maintenance(True, 2.0)  # its Node carries nodefence.io/maintenance=true
    assert p.claim_withdrawn  # heartbeats from now on advertise no armed watchdog
    assert not p.should_feed(6.5) and p.stopped  # not exempt until the leader can know
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.maintenance(True, 2.0)
    p.echo(2.5)  # a heartbeat sent after the withdrawal came back: the leader has it
    assert p.should_feed(60.0) and not p.stopped  # an hour of firmware work: no reset


def test_an_echo_of_a_heartbeat_sent_before_the_withdrawal_does_not_exempt() -> None:
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.maintenance(True, 2.0)
    p.echo(1.9)
    assert not p.should_feed(7.0)


def test_leaving_maintenance_restores_the_cut_off_and_the_claim() -> None:
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.maintenance(True, 2.0)
    p.echo(2.5)
    p.contact(100.0)  # the read that found the mark gone showed no fencing record either
    p.maintenance(False, 100.0)
    assert not p.claim_withdrawn
    assert p.should_feed(104.0) and not p.should_feed(105.5)
    p = FeedPolicy(cut_off=5.0)
    p.contact(1.0)
    p.maintenance(True, 2.0)
    p.echo(2.5)
    p.fenced("fence-n1-x")  # a fencing record always stops feeding, maintenance or not
    assert not p.should_feed(3.0)


def test_no_watchdog_proof_for_a_node_in_maintenance() -> None:
    ok, why = self_fence_verdict(replace(OK, in_maintenance=True))
    assert not ok and "maintenance" in why


async def test_the_mark_watcher_reads_the_maintenance_mark_with_the_records() -> None:
    p = FeedPolicy(cut_off=5.0)
    t = itertools.count(10.0, 0.5)
    stop = asyncio.Event()
    reads: list[bool] = [True, False]

    async def marks() -> list[str]:
        return []

    async def mark() -> bool:
        value = reads.pop(0)
        if not reads:
            stop.set()
        return value

    await watch_marks(marks, p, 0.01, stop, clock=lambda: next(t), read_mark=mark)
    assert p.last_contact is not None and not p.claim_withdrawn  # the mark came and went
