"""The leader's edges to several brokers: what "connected" means for the guards and the
watchdog proof. In-memory broker edges (the `LeaderBroker` surface) and a hand-set clock; no
sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio

from nodefence.agent.config.agent_file import parse_config
from nodefence.agent.detection.policy import PolicyDecision
from nodefence.agent.detection.profiles import DEFAULT
from nodefence.agent.heartbeat.codec import (
    Heartbeat,
    WatchdogClaim,
    encode_heartbeat,
    heartbeat_topic,
)
from nodefence.agent.kube.client import ClusterApi
from nodefence.agent.leader.ingest_loop import HeartbeatIngest, Listener
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.agent.mqtt.broker_set_client import BrokerSet
from nodefence.agent.mqtt.leader_broker_client import BrokerLost, OnMessage, OnUp
from tests.support.clock import FakeClock
from tests.support.wait import eventually

CLUSTER = "brokers-test"


class MemoryBroker:
    """A `LeaderBroker` in memory: `drop()` ends the session, `refuse` refuses new ones."""

    def __init__(self) -> None:
        self.refuse = False
        self.connected = False
        self.published: list[tuple[str, bytes, bool]] = []
        self.deliver: OnMessage | None = None
        self._drop = asyncio.Event()

    async def session(self, filters: list[str], on_message: OnMessage, on_up: OnUp) -> None:
        if self.refuse:
            raise BrokerLost("connection refused")
        self._drop = asyncio.Event()
        self.connected, self.deliver = True, on_message
        on_up()
        try:
            await self._drop.wait()
        finally:
            self.connected, self.deliver = False, None
        raise BrokerLost("connection lost")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if not self.connected:
            raise BrokerLost("not connected")
        self.published.append((topic, payload, retain))

    def drop(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self._drop.set()


@pytest_asyncio.fixture
async def two() -> AsyncIterator[tuple[BrokerSet, MemoryBroker, MemoryBroker, FakeClock]]:
    clock = FakeClock()
    a, b = MemoryBroker(), MemoryBroker()
    brokers = BrokerSet({"a": a, "b": b}, reconnect_min=0.001, reconnect_max=0.01, clock=clock)
    clock.now = 10.0
    task = asyncio.create_task(brokers.run(["#"], lambda topic, payload: None))
    try:
        await eventually("both up", lambda: len(brokers.up()) == 2)
        yield brokers, a, b, clock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_losing_one_broker_of_two_is_no_gap_for_the_guards(
    two: tuple[BrokerSet, MemoryBroker, MemoryBroker, FakeClock],
) -> None:
    brokers, _, b, clock = two
    assert brokers.any_up_since == 10.0 and brokers.all_up_since() == 10.0

    clock.now = 20.0
    b.drop(refuse=True)
    await eventually("b down", lambda: brokers.up() == ["a"])
    assert brokers.any_up_since == 10.0  # a carried on: silence still means something
    assert brokers.all_up_since() is None

    clock.now = 30.0
    b.refuse = False
    await eventually("b back", lambda: len(brokers.up()) == 2)
    assert brokers.any_up_since == 10.0
    assert brokers.all_up_since() == 30.0  # not every broker heard without a break since 10


async def test_losing_every_broker_is_a_gap_and_the_span_starts_again(
    two: tuple[BrokerSet, MemoryBroker, MemoryBroker, FakeClock],
) -> None:
    brokers, a, b, clock = two
    clock.now = 20.0
    a.drop(refuse=True)
    b.drop(refuse=True)
    await eventually("both down", lambda: not brokers.up())
    assert brokers.any_up_since is None and brokers.all_up_since() is None
    with pytest.raises(BrokerLost):
        await brokers.publish("t", b"x")

    clock.now = 25.0
    b.refuse = False
    await eventually("b back", lambda: brokers.up() == ["b"])
    assert brokers.any_up_since == 25.0


async def test_publish_goes_to_every_broker_that_is_up(
    two: tuple[BrokerSet, MemoryBroker, MemoryBroker, FakeClock],
) -> None:
    brokers, a, b, _ = two
    assert await brokers.publish("view", b"1", retain=True) == 2
    a.drop(refuse=True)
    await eventually("a down", lambda: brokers.up() == ["b"])
    assert await brokers.publish("probe", b"2") == 1
    assert a.published == [("view", b"1", True)]
    assert b.published == [("view", b"1", True), ("probe", b"2", False)]


def test_a_broker_set_needs_a_broker() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        BrokerSet({})


# -- the watchdog proof over two brokers ---------------------------------------------------------


def leader_over(brokers: BrokerSet, clock: FakeClock, tmp_path: Path) -> LeaderSide:
    doc = {"cluster": CLUSTER, "fencing": {"self_fence": True, "self_fence_margin": 1}}
    cfg = parse_config(doc, path=tmp_path / "agent.yaml", env={})
    listener = Listener(brokers, HeartbeatIngest(cfg, DEFAULT, clock=clock))
    # The proof is pure bookkeeping: no API call is made.
    side = LeaderSide(
        cfg, DEFAULT, cast(ClusterApi, None), "leader", listener=listener, clock=clock
    )
    side.last_decision = PolicyDecision()  # fit to judge
    return side


def armed_heartbeat(side: LeaderSide, node: str, clock: FakeClock, at: float) -> None:
    clock.now = at
    claim = WatchdogClaim(timeout=10.0, cut_off=5.0, feed_interval=1.0)
    hb = Heartbeat(node, int(at), "boot", 1.0, "test", wd=claim)
    side.listener.ingest.on_message(heartbeat_topic(CLUSTER, node), encode_heartbeat(hb))


async def test_the_watchdog_proof_needs_every_broker_heard_since_the_last_heartbeat(
    two: tuple[BrokerSet, MemoryBroker, MemoryBroker, FakeClock], tmp_path: Path
) -> None:
    # The node's watchdog counts an echo from ANY broker as contact: a broker the leader did
    # not hear without a break may have carried heartbeats the leader never saw.
    brokers, _, b, clock = two
    side = leader_over(brokers, clock, tmp_path)
    armed_heartbeat(side, "node-1", clock, at=20.0)
    deadline = 25.0 + 5 + 1 + 10 + 1  # marked at 25: cut_off + feed + timeout + margin

    clock.now = deadline + 1
    proven, why = side.self_fence_check("node-1", 25.0, 24.0, True)
    assert proven, why

    b.drop(refuse=True)
    await eventually("b down", lambda: brokers.up() == ["a"])
    proven, why = side.self_fence_check("node-1", 25.0, 24.0, True)
    assert not proven and "broker connection" in why

    clock.now = deadline + 2
    b.refuse = False
    await eventually("b back", lambda: len(brokers.up()) == 2)
    proven, why = side.self_fence_check("node-1", 25.0, 24.0, True)
    assert not proven and "broker connection" in why  # b's gap came after the last heartbeat
    assert side.broker_up_since == 10.0  # while detection never lost its footing


async def test_a_broker_that_goes_quiet_while_connected_stops_counting_for_the_proof() -> None:
    # A cut network drops packets and closes nothing: the session looks up until the keepalive
    # notices. Every agent heartbeats through every broker, so a quiet broker is a broken one.
    clock = FakeClock()
    a, b = MemoryBroker(), MemoryBroker()
    brokers = BrokerSet({"a": a, "b": b}, clock=clock, silence=3.0)
    clock.now = 10.0
    task = asyncio.create_task(brokers.run(["#"], lambda topic, payload: None))
    try:
        await eventually("both up", lambda: a.deliver is not None and b.deliver is not None)
        assert brokers.all_up_since() is None  # nothing heard yet
        for t in (11.0, 12.0, 13.0):
            clock.now = t
            for edge in (a, b):
                assert edge.deliver is not None
                edge.deliver("hb", b"x")
        assert brokers.all_up_since() == 11.0

        for t in (14.0, 15.0, 16.0, 17.0):  # b delivers nothing more, its session "up"
            clock.now = t
            assert a.deliver is not None
            a.deliver("hb", b"x")
        assert brokers.up() == ["a", "b"]
        assert brokers.all_up_since() is None

        clock.now = 18.0
        assert b.deliver is not None
        b.deliver("hb", b"x")  # it speaks again: it counts from now, not from 11
        assert a.deliver is not None
        a.deliver("hb", b"x")
        assert brokers.all_up_since() == 18.0
        assert brokers.any_up_since == 10.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
