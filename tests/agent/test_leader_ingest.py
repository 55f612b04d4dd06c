"""The leader side's heartbeat ingest: what it counts, what it drops, what the detector sees.

A real `LeaderSide` runs as a task against a real mosquitto broker and the Kubernetes API
emulator over HTTP (both on free loopback ports, started in fixtures and stopped even on
failure). A raw aiomqtt client plays the nodes, and an attacker or a buggy agent: valid
heartbeats, garbage, oversized payloads, a payload naming another node, replays, a future
version. Every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.detection.profiles import DEFAULT
from nodefence.agent.heartbeat.codec import PREFIX, Heartbeat, encode_heartbeat, heartbeat_topic
from nodefence.agent.kube.client import ClusterApi, load_api_client
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from tests.support.leader import cancel_and_wait, leader_config, running_leader
from tests.support.wait import eventually

CLUSTER = "ingest-test"
BOOT = "boot-a"
_CANARY_SEQ = itertools.count()


def beat(node: str, seq: int, boot: str = BOOT) -> bytes:
    return encode_heartbeat(Heartbeat(node, seq, boot, 1.0, "0.1.0"))


def raw(**fields: Any) -> bytes:
    """A heartbeat-shaped JSON payload with any fields, valid or not."""
    obj = {"v": 1, "node": "node-1", "seq": 100, "boot": BOOT, "interval": 1.0, "agent": "0.1.0"}
    obj.update(fields)
    return json.dumps(obj).encode()


@pytest.fixture
def cfg(kube: KubeApiServer, broker: MosquittoBroker, tmp_path: Path) -> AgentConfig:
    return leader_config(CLUSTER, kube, broker, tmp_path)


@pytest_asyncio.fixture
async def leader(cfg: AgentConfig) -> AsyncIterator[tuple[LeaderSide, asyncio.Task[None]]]:
    """A running leader side, subscribed to the broker; cancelled at the end."""
    async with running_leader(cfg, DEFAULT, "leader-1") as running:
        yield running


@pytest_asyncio.fixture
async def node_client(broker: MosquittoBroker) -> AsyncIterator[aiomqtt.Client]:
    """One raw MQTT connection for every fake node: the broker keeps its messages in order."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="fake-nodes") as client:
        yield client


async def send(client: aiomqtt.Client, node: str, payload: bytes) -> None:
    await client.publish(heartbeat_topic(CLUSTER, node), payload, qos=1)


async def barrier(client: aiomqtt.Client, side: LeaderSide) -> None:
    """Wait until the leader has handled everything sent before: a fresh heartbeat of a
    separate canary node, sent last on the same connection, has been counted."""
    before = side.detector.last_heartbeat("canary")
    await send(client, "canary", beat("canary", next(_CANARY_SEQ)))
    await eventually(
        "the canary heartbeat", lambda: side.detector.last_heartbeat("canary") not in (None, before)
    )


# -- valid heartbeats --------------------------------------------------------------------------


async def test_valid_heartbeats_are_counted_and_stamped_on_the_leaders_clock_on_receipt(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, _ = leader
    sent_at = time.monotonic()
    for seq in range(5):
        await send(node_client, "node-1", beat("node-1", seq))
    await send(node_client, "node-2", beat("node-2", 0))

    await eventually("six heartbeats", lambda: side.stats.heartbeats == 6)
    seen_at = time.monotonic()

    assert not side.stats.rejected
    for node in ("node-1", "node-2"):
        stamp = side.detector.last_heartbeat(node)
        assert stamp is not None and sent_at <= stamp <= seen_at
    assert side.detector.last_heartbeat("node-3") is None


async def test_a_restarted_agent_counting_from_zero_again_is_accepted(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, _ = leader
    for seq in range(3):
        await send(node_client, "node-1", beat("node-1", seq, boot="boot-a"))
    await send(node_client, "node-1", beat("node-1", 0, boot="boot-b"))

    await eventually("four heartbeats", lambda: side.stats.heartbeats == 4)
    assert not side.stats.rejected


# -- malformed heartbeats, one by one ----------------------------------------------------------

OVERSIZED = raw(pad="x" * 2000)
assert len(OVERSIZED) > 1024

CASES = [
    # (case, topic node, payload, reason it is counted under)
    ("garbage bytes", "node-1", b"\x00\xff\xfe garbage \x80", "malformed"),
    ("empty payload", "node-1", b"", "malformed"),
    ("json but not an object", "node-1", b"[1, 2, 3]", "malformed"),
    ("a required field missing", "node-1", b'{"v":1,"node":"node-1","seq":9}', "malformed"),
    ("a field of the wrong type", "node-1", raw(seq="nine"), "malformed"),
    ("NaN interval", "node-1", b'{"v":1,"node":"node-1","seq":9,"boot":"b",'
     b'"interval":NaN,"agent":"x"}', "malformed"),
    ("oversized", "node-1", OVERSIZED, "oversized"),
    ("payload node differs from topic node", "node-1", beat("node-2", 9), "node_mismatch"),
    ("old sequence replayed", "node-1", beat("node-1", 1), "replayed"),
    ("a future version", "node-1", raw(v=2), "unsupported_version"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("topic_node", "payload", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_a_malformed_heartbeat_is_counted_under_its_reason_and_never_reaches_the_detector(
    leader: tuple[LeaderSide, asyncio.Task[None]],
    node_client: aiomqtt.Client,
    topic_node: str,
    payload: bytes,
    reason: str,
) -> None:
    side, task = leader
    for seq in range(10, 13):  # node-1 has a stream: boot-a, seq 10..12
        await send(node_client, "node-1", beat("node-1", seq))
    await eventually("three heartbeats", lambda: side.stats.heartbeats == 3)
    last_valid = side.detector.last_heartbeat("node-1")

    await send(node_client, topic_node, payload)
    await barrier(node_client, side)

    assert dict(side.stats.rejected) == {reason: 1}
    assert side.stats.heartbeats == 4  # node-1's three and the canary
    assert side.detector.last_heartbeat("node-1") == last_valid
    assert side.detector.last_heartbeat("node-2") is None
    assert not task.done()

    await send(node_client, "node-1", beat("node-1", 13))  # the stream goes on
    await eventually("node-1 heard again", lambda: side.stats.heartbeats == 5)
    assert side.detector.last_heartbeat("node-1") != last_valid


async def test_a_copy_of_a_heartbeat_from_a_second_broker_is_a_quiet_duplicate(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, _ = leader
    for seq in (0, 1):
        await send(node_client, "node-1", beat("node-1", seq))
    await eventually("two heartbeats", lambda: side.stats.heartbeats == 2)
    last_valid = side.detector.last_heartbeat("node-1")

    await send(node_client, "node-1", beat("node-1", 1))  # the same, via the other broker
    await send(node_client, "node-1", beat("node-1", 0))  # a slower broker's late copy
    await barrier(node_client, side)

    assert side.stats.duplicates == 2
    assert not side.stats.rejected and "node-1" not in side.rejected_at
    assert side.detector.last_heartbeat("node-1") == last_valid  # a copy is no new life


async def test_a_replay_of_a_replaced_boot_is_dropped(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, _ = leader
    await send(node_client, "node-1", beat("node-1", 7, boot="boot-a"))
    await send(node_client, "node-1", beat("node-1", 0, boot="boot-b"))  # agent restarted
    await eventually("two heartbeats", lambda: side.stats.heartbeats == 2)
    last_valid = side.detector.last_heartbeat("node-1")

    await send(node_client, "node-1", beat("node-1", 8, boot="boot-a"))  # captured and replayed
    await barrier(node_client, side)

    assert dict(side.stats.rejected) == {"replayed": 1}
    assert side.detector.last_heartbeat("node-1") == last_valid


async def test_a_malformed_probe_result_is_counted_and_dropped(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, task = leader
    await node_client.publish(f"{PREFIX}/{CLUSTER}/probe-result/node-1", b"\xff{", qos=1)
    await barrier(node_client, side)

    assert dict(side.stats.rejected) == {"malformed_probe_result": 1}
    assert side.stats.probe_results == 0
    assert not task.done()


# -- a flood of everything -----------------------------------------------------------------


async def test_a_flood_of_mixed_garbage_never_crashes_the_leader_and_only_valid_ones_count(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    side, task = leader
    noise = random.Random(1234)
    expected: dict[str, int] = {}
    valid = 0
    for seq in range(20):
        await send(node_client, "node-1", beat("node-1", 2 * seq + 100))
        valid += 1
        for _, topic_node, payload, reason in CASES:
            if reason == "replayed":
                payload = beat("node-1", 2 * seq + 99)  # below the last one, never sent
                await send(node_client, "node-1", beat("node-1", 2 * seq + 100))  # a copy
            await send(node_client, topic_node, payload)
            expected[reason] = expected.get(reason, 0) + 1
        await send(node_client, "node-1", noise.randbytes(64 + seq))
        expected["malformed"] += 1

    await barrier(node_client, side)

    assert dict(side.stats.rejected) == expected
    assert side.stats.heartbeats == valid + 1  # and the canary
    assert side.stats.duplicates == 20  # copies are dropped, never refused
    assert side.detector.last_heartbeat("node-2") is None
    assert not task.done()
    assert side.broker_up_since is not None  # never disconnected by all that


# -- stopping --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:LeaderSide ignored a cancellation")
async def test_a_cancelled_leader_side_stops_even_if_a_library_swallowed_the_cancellation(
    leader: tuple[LeaderSide, asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    side, task = leader
    judge_once = side.judge_once
    entered, swallowed = asyncio.Event(), asyncio.Event()

    async def racy_judge_once() -> Any:
        decision = await judge_once()
        if not swallowed.is_set():
            entered.set()
            try:  # stands for aiomqtt's publish of the view, completing as the cancel arrives
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed.set()  # what 3.11's wait_for does in that race
        return decision

    monkeypatch.setattr(side, "judge_once", racy_judge_once)
    await asyncio.wait_for(entered.wait(), 5)

    assert await cancel_and_wait(side, task), "the leader side ran on after its cancellation"
    assert swallowed.is_set()


# -- what the leader must not believe -----------------------------------------------------------


def _node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


async def test_a_heartbeat_that_arrives_after_its_node_was_deleted_adds_no_phantom_node(
    leader: tuple[LeaderSide, asyncio.Task[None]],
    node_client: aiomqtt.Client,
    kube: KubeApiServer,
) -> None:
    side, _ = leader
    kube.store.create("nodes", _node("node-7"))
    await eventually("the Node watched", lambda: "node-7" in side.nodes)
    await send(node_client, "node-7", beat("node-7", 0))
    await barrier(node_client, side)
    assert side.detector.last_heartbeat("node-7") is not None
    kube.store.delete("nodes", "node-7")  # fenced and deleted
    await eventually("the deletion watched", lambda: "node-7" not in side.nodes)
    assert "node-7" not in {v.node for v in side.detector.evaluate(time.monotonic())}
    await send(node_client, "node-7", beat("node-7", 1))  # in flight when it was deleted
    await barrier(node_client, side)
    assert "node-7" not in {v.node for v in side.detector.evaluate(time.monotonic())}
    assert side.stats.rejected["deleted_node"] == 1
    kube.store.create("nodes", _node("node-7"))  # repaired: registered again
    await eventually("the new Node watched", lambda: "node-7" in side.nodes)
    await send(node_client, "node-7", beat("node-7", 0, boot="boot-b"))
    await barrier(node_client, side)
    assert side.detector.last_heartbeat("node-7") is not None


async def test_a_clean_stop_withdraws_the_watchdog_claim_even_if_a_heartbeat_comes_after_it(
    leader: tuple[LeaderSide, asyncio.Task[None]], node_client: aiomqtt.Client
) -> None:
    from nodefence.agent.heartbeat.codec import (
        NodeState,
        WatchdogClaim,
        encode_status,
        status_topic,
    )

    side, _ = leader
    claim = WatchdogClaim(10.0, 5.0, 1.0)

    def armed(seq: int, boot: str = BOOT) -> bytes:
        return encode_heartbeat(Heartbeat("node-1", seq, boot, 1.0, "0.1.0", wd=claim))

    await send(node_client, "node-1", armed(0))
    await barrier(node_client, side)
    assert side.watchdog_claims["node-1"] == claim
    stopped = encode_status(NodeState.STOPPED, BOOT)
    await node_client.publish(status_topic(CLUSTER, "node-1"), stopped, qos=1, retain=True)
    await eventually("the claim withdrawn", lambda: side.watchdog_claims["node-1"] is None)
    await send(node_client, "node-1", armed(1))  # reordered: sent before the stop
    await barrier(node_client, side)
    assert side.watchdog_claims["node-1"] is None
    await send(node_client, "node-1", armed(0, boot="boot-b"))  # the agent started again
    await barrier(node_client, side)
    assert side.watchdog_claims["node-1"] == claim


async def test_a_node_uncordoned_while_marked_for_maintenance_raises_an_alert_and_an_event(
    leader: tuple[LeaderSide, asyncio.Task[None]], kube: KubeApiServer
) -> None:
    # `d8 k uncordon` ends a drain but leaves our mark: never fenced, yet VMs may land there.
    side, _ = leader
    marked = _node("node-8")
    marked["metadata"]["labels"] = {"nodefence.io/maintenance": "true"}
    kube.store.create("nodes", marked)
    await eventually("the Node watched", lambda: "node-8" in side.nodes)
    decision = await side.judge_once()
    assert [(a.kind.value, a.node) for a in decision.alerts] == [
        ("maintenance-schedulable", "node-8")
    ]
    events = [
        e
        for e in kube.store.list("events")["items"]
        if e["reason"] == "AlertMaintenanceSchedulable"
    ]
    assert len(events) == 1 and "maintenance exit node-8" in events[0]["message"]
    kube.store.patch("nodes", "node-8", {"spec": {"unschedulable": True}})  # cordoned again
    await eventually("the cordon watched", lambda: side.nodes["node-8"].unschedulable)
    assert (await side.judge_once()).alerts == []


# -- two brokers ---------------------------------------------------------------------------------


async def test_with_two_brokers_each_heartbeat_counts_once_and_one_broker_lost_blinds_nobody(
    cfg: AgentConfig, broker: MosquittoBroker, broker_b: MosquittoBroker
) -> None:
    from nodefence.agent.config.agent_file import BrokerConfig

    both = tuple(
        BrokerConfig(port=m.port, reconnect_min=0.05, reconnect_max=0.5) for m in (broker, broker_b)
    )
    two = dataclasses.replace(cfg, broker=both[0], broker_endpoints=both)
    assert two.kube.kubeconfig is not None
    side = LeaderSide(two, DEFAULT, ClusterApi(load_api_client(two.kube.kubeconfig)), "leader-2")
    task = asyncio.create_task(side.run())
    try:
        await eventually("both brokers", lambda: len(side.listener.brokers.up()) == 2, 10)
        up_since = side.broker_up_since
        async with (
            aiomqtt.Client("127.0.0.1", broker.port, identifier="node-a") as via_a,
            aiomqtt.Client("127.0.0.1", broker_b.port, identifier="node-b") as via_b,
        ):
            for seq in range(5):  # as an agent does: each heartbeat to every broker
                await send(via_a, "node-1", beat("node-1", seq))
                await send(via_b, "node-1", beat("node-1", seq))
            await eventually(
                "five heartbeats, five copies",
                lambda: (side.stats.heartbeats, side.stats.duplicates) == (5, 5),
            )
            assert not side.stats.rejected and "node-1" not in side.rejected_at

        await asyncio.to_thread(broker_b.stop)
        await eventually("b lost", lambda: len(side.listener.brokers.up()) == 1)
        assert side.broker_up_since == up_since  # still heard through a: no gap, no freeze
        assert side.listener.brokers.all_up_since() is None
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="node-a2") as via_a:
            await send(via_a, "node-1", beat("node-1", 5))
            await eventually("heard via a alone", lambda: side.stats.heartbeats == 6)
    finally:
        await cancel_and_wait(side, task)


async def test_a_kubelet_renewal_read_fresh_before_a_power_off_is_in_the_cache_at_once(
    kube: KubeApiServer, leader: tuple[LeaderSide, asyncio.Task[None]]
) -> None:
    side, _ = leader
    kube.store.create("nodes", _node("node-9"))
    lease = {
        "metadata": {"name": "node-9", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-9", "renewTime": "2026-01-01T00:00:00.000000Z"},
    }
    kube.store.create("leases", lease, "kube-node-lease")
    await eventually("its Lease watched", lambda: side.kubelet_seen.get("node-9", (None,))[0])
    first = side.kubelet_seen["node-9"][0]
    lease["spec"]["renewTime"] = "2026-01-01T00:00:10.000000Z"
    current = kube.store.get("leases", "node-9", "kube-node-lease")
    current["spec"] = lease["spec"]
    kube.store.update("leases", current, "kube-node-lease")
    await side.read_kubelet_lease("node-9")  # the guard's read, whatever the watch delivered
    renewed = side.kubelet_seen["node-9"]
    assert renewed[0] != first and renewed[0] is not None and renewed[0].second == 10
    assert renewed[2] is not None  # a renewal seen by this leader, stamped on its clock
