"""The node side's `HeartbeatPublisher` against a real mosquitto broker.

A raw aiomqtt subscriber is the witness: it sees what the broker actually delivers (heartbeats,
the retained online/offline status, the Last Will). The broker runs on a free loopback port,
started in a fixture and stopped even on failure; every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.heartbeat.codec import (
    NodeState,
    decode_heartbeat,
    decode_status,
    decode_status_boot,
    heartbeat_topic,
    status_topic,
)
from nodefence.agent.heartbeat.sender_loop import HeartbeatPublisher
from nodefence.backends.spec import Secret
from nodefence.hwsim.broker import MosquittoBroker
from tests.support.brokers import running_broker
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "test-cluster"
NODE = "node-1"
PASSWORD = "pw-Zq81-never-logged"


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "mqtt-auth", users={NODE: PASSWORD, "witness": "w"}) as mqtt:
        yield mqtt


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


@dataclass
class Witness:
    """A subscriber that keeps reconnecting and records every message it gets."""

    messages: list[Received] = field(default_factory=list)
    subscribed: int = 0  # sessions that completed their subscription

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def heartbeats(self, node: str = NODE, since: float = 0.0) -> list[Any]:
        """Decoded heartbeats of `node` received at or after `since` (monotonic)."""
        return [
            decode_heartbeat(node, m.payload)
            for m in self.on(heartbeat_topic(CLUSTER, node))
            if m.at >= since
        ]

    def states(self, node: str = NODE) -> list[NodeState | None]:
        return [decode_status(m.payload) for m in self.on(status_topic(CLUSTER, node))]


async def _witness_loop(
    w: Witness, port: int, topics: list[str], username: str | None, password: str | None
) -> None:
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, username=username, password=password, timeout=2
            ) as client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                w.subscribed += 1
                async for msg in client.messages:
                    payload = msg.payload
                    assert isinstance(payload, bytes | bytearray)
                    w.messages.append(
                        Received(str(msg.topic), bytes(payload), msg.retain, time.monotonic())
                    )
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)  # broker restarting: try again shortly


@pytest_asyncio.fixture
async def witness_factory() -> AsyncIterator[Callable[..., Any]]:
    """Starts witnesses on demand (waiting until subscribed); cancels them all at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(
        mqtt: MosquittoBroker,
        *topics: str,
        username: str | None = None,
        password: str | None = None,
    ) -> Witness:
        w = Witness()
        subs = list(topics) or [heartbeat_topic(CLUSTER, NODE), status_topic(CLUSTER, NODE)]
        tasks.append(asyncio.create_task(_witness_loop(w, mqtt.port, subs, username, password)))
        await eventually("the witness subscribed", lambda: w.subscribed)
        return w

    try:
        yield start
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Running:
    publisher: HeartbeatPublisher
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest_asyncio.fixture
async def run_publisher() -> AsyncIterator[Callable[..., Running]]:
    """Starts publishers as tasks; stops (then cancels) them all at the end."""
    started: list[Running] = []

    def start(broker_cfg: BrokerConfig | list[BrokerConfig], interval: float = 0.1) -> Running:
        pub = HeartbeatPublisher(broker_cfg, CLUSTER, NODE, interval=interval)
        stop = asyncio.Event()
        r = Running(pub, stop, asyncio.create_task(pub.run(stop)))
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop.set()
        tasks = [r.task for r in started]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def config(mqtt: MosquittoBroker, **kw: Any) -> BrokerConfig:
    base: dict[str, Any] = {"port": mqtt.port, "keepalive": 1, "reconnect_min": 0.05}
    base["reconnect_max"] = 0.4
    return BrokerConfig(**{**base, **kw})


# -- heartbeats ------------------------------------------------------------------------------


async def test_heartbeats_arrive_on_the_node_topic_with_rising_seq_and_one_boot(
    broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    witness = await witness_factory(broker)
    r = run_publisher(config(broker), interval=0.1)

    await eventually("ten heartbeats", lambda: len(witness.heartbeats()) >= 10)

    beats = witness.heartbeats()
    assert {hb.node for hb in beats} == {NODE}
    assert {hb.boot for hb in beats} == {r.publisher.boot}
    assert [hb.seq for hb in beats] == list(range(len(beats)))  # from 0, none lost on loopback
    assert all(hb.interval == 0.1 for hb in beats)
    assert r.publisher.stats.connected and r.publisher.stats.connects == 1


async def test_heartbeats_are_paced_by_the_interval(
    broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    witness = await witness_factory(broker)
    run_publisher(config(broker), interval=0.1)
    topic = heartbeat_topic(CLUSTER, NODE)

    first = (await eventually("a heartbeat", lambda: witness.on(topic)))[0].at
    await eventually("1.2 s of heartbeats", lambda: witness.on(topic)[-1].at > first + 1.2, 5)

    in_one_second = [m for m in witness.on(topic) if first <= m.at < first + 1.0]
    assert 8 <= len(in_one_second) <= 12, len(in_one_second)


# -- status and the Last Will ----------------------------------------------------------------


async def test_a_connected_agent_is_retained_online_and_a_clean_stop_retains_stopped(
    broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    r = run_publisher(config(broker))
    await eventually("connected", lambda: r.publisher.stats.connected)

    late = await witness_factory(broker, status_topic(CLUSTER, NODE))
    online = await eventually("the retained status", lambda: late.on(status_topic(CLUSTER, NODE)))
    assert online[0].retain
    assert decode_status(online[0].payload) is NodeState.ONLINE

    r.stop.set()
    await asyncio.wait_for(r.task, 5)
    assert late.states()[-1] is NodeState.STOPPED  # clean: its watchdog (if any) disarmed
    assert not r.publisher.stats.connected and r.publisher.stop_announced.is_set()

    after = await witness_factory(broker, status_topic(CLUSTER, NODE))
    kept = await eventually("the retained status", lambda: after.on(status_topic(CLUSTER, NODE)))
    assert kept[0].retain
    assert decode_status_boot(kept[0].payload) == (NodeState.STOPPED, r.publisher.boot)


PUBLISHER_SCRIPT = """
import asyncio, sys
from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.heartbeat.sender_loop import HeartbeatPublisher

async def main() -> None:
    cfg = BrokerConfig(port=int(sys.argv[1]), keepalive=1)
    await HeartbeatPublisher(cfg, sys.argv[2], sys.argv[3], interval=0.1).run(asyncio.Event())

asyncio.run(main())
"""


@pytest_asyncio.fixture
async def publisher_process(broker: MosquittoBroker) -> AsyncIterator[asyncio.subprocess.Process]:
    """A heartbeat publisher in its own Python process; killed at the end if still alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER_SCRIPT,
        str(broker.port),
        CLUSTER,
        NODE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_an_agent_killed_hard_is_marked_offline_by_its_last_will(
    broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    publisher_process: asyncio.subprocess.Process,
) -> None:
    witness = await witness_factory(broker)
    await eventually("heartbeats from the process", lambda: witness.heartbeats(), 15)
    assert witness.states() == [NodeState.ONLINE]

    publisher_process.kill()  # SIGKILL: no clean offline, only the broker's Last Will
    killed_at = time.monotonic()
    await asyncio.wait_for(publisher_process.wait(), 5)

    await eventually("offline", lambda: NodeState.OFFLINE in witness.states(), 5)
    will = witness.on(status_topic(CLUSTER, NODE))[-1]
    assert decode_status(will.payload) is NodeState.OFFLINE
    assert will.at - killed_at < 3.0  # well within keepalive * 1.5 + slack


# -- reconnects ------------------------------------------------------------------------------


async def test_after_a_broker_restart_heartbeats_resume_with_the_same_boot_and_higher_seq(
    broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    witness = await witness_factory(broker)
    r = run_publisher(config(broker))
    await eventually("heartbeats", lambda: len(witness.heartbeats()) >= 3)

    await asyncio.to_thread(broker.restart)
    restarted_at = time.monotonic()  # anything received from now on came via the new broker
    last_before = witness.heartbeats()[-1]

    after = await eventually(
        "heartbeats after the restart", lambda: witness.heartbeats(since=restarted_at), 10
    )
    assert {hb.boot for hb in after} == {last_before.boot}
    assert after[0].seq > last_before.seq
    assert r.publisher.stats.connects >= 2
    assert r.publisher.stats.disconnects >= 1
    assert r.publisher.stats.connected
    assert not r.task.done()
    await eventually("online again", lambda: witness.states()[-1] is NodeState.ONLINE)


# -- credentials -----------------------------------------------------------------------------


async def test_the_right_password_connects_and_heartbeats(
    secured_broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    witness = await witness_factory(secured_broker, username="witness", password="w")
    r = run_publisher(config(secured_broker, username=NODE, password=Secret(PASSWORD)))

    await eventually("heartbeats", lambda: len(witness.heartbeats()) >= 3)
    assert r.publisher.stats.connects == 1
    assert r.publisher.stats.last_error == ""


async def test_a_wrong_password_never_connects_retries_with_backoff_and_is_never_shown(
    secured_broker: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "wrong-Xy7-secret"
    ceilings: list[float] = []
    uniform = random.uniform

    def spy(low: float, high: float) -> float:
        ceilings.append(high)  # the backoff ceiling of this retry
        return uniform(low, high)

    monkeypatch.setattr("nodefence.agent.heartbeat.sender_loop.random.uniform", spy)
    caplog.set_level(logging.DEBUG)
    witness = await witness_factory(secured_broker, username="witness", password="w")
    r = run_publisher(config(secured_broker, username=NODE, password=Secret(wrong)))

    await eventually("several refused attempts", lambda: r.publisher.stats.disconnects >= 5, 10)

    stats = r.publisher.stats
    assert stats.connects == 0 and not stats.connected
    assert not r.task.done()  # still retrying, not crashed
    assert stats.last_error
    assert "author" in stats.last_error.lower()  # says why: not authorised
    # Exponential backoff from reconnect_min (0.05), capped at reconnect_max (0.4).
    assert ceilings[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4])
    assert not witness.heartbeats()
    for text in (stats.last_error, caplog.text, *(repr(rec.__dict__) for rec in caplog.records)):
        assert wrong not in text
        assert PASSWORD not in text


# -- several brokers ---------------------------------------------------------------------------


async def test_each_heartbeat_goes_to_every_broker_and_a_dead_one_delays_nobody(
    broker: MosquittoBroker,
    broker_b: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    on_a, on_b = await witness_factory(broker), await witness_factory(broker_b)
    r = run_publisher([config(broker), config(broker_b)], interval=0.1)

    await eventually(
        "heartbeats on both", lambda: min(len(on_a.heartbeats()), len(on_b.heartbeats())) >= 5
    )
    a_seqs = [hb.seq for hb in on_a.heartbeats()]
    b_seqs = [hb.seq for hb in on_b.heartbeats()]
    # One sequence, every broker: once both sessions are up each heartbeat goes to both (the
    # later session may miss the first ones, sent before it was up).
    start, end = max(a_seqs[0], b_seqs[0]), min(a_seqs[-1], b_seqs[-1])
    both = list(range(start, end + 1))
    assert min(a_seqs[0], b_seqs[0]) == 0 and end - start >= 4, (a_seqs, b_seqs)
    assert [s for s in a_seqs if start <= s <= end] == both, a_seqs
    assert [s for s in b_seqs if start <= s <= end] == both, b_seqs
    assert {hb.boot for hb in on_a.heartbeats() + on_b.heartbeats()} == {r.publisher.boot}

    await asyncio.to_thread(broker_b.stop)
    gone = time.monotonic()
    topic = heartbeat_topic(CLUSTER, NODE)
    await eventually("a second of heartbeats on a", lambda: on_a.on(topic)[-1].at > gone + 1.0)
    after = [m.at for m in on_a.on(topic) if m.at > gone]
    gaps = [y - x for x, y in itertools.pairwise(after)]
    assert max(gaps) < 0.35, gaps  # paced as before: the dead broker holds nothing up
    assert r.publisher.connected_brokers() == [config(broker).address]
    assert r.publisher.stats.connected


async def test_a_clean_stop_is_announced_once_a_broker_acknowledges_it(
    broker: MosquittoBroker,
    broker_b: MosquittoBroker,
    witness_factory: Callable[..., Any],
    run_publisher: Callable[..., Running],
) -> None:
    await asyncio.to_thread(broker_b.stop)  # one broker is down all along
    on_a = await witness_factory(broker, status_topic(CLUSTER, NODE))
    r = run_publisher([config(broker), config(broker_b)])
    await eventually("connected to a", lambda: r.publisher.connected_brokers())

    r.stop.set()
    await asyncio.wait_for(r.task, 5)
    assert r.publisher.stop_announced.is_set()  # the leader hears a (it needs every broker)
    assert on_a.states()[-1] is NodeState.STOPPED
