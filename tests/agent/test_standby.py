"""Which agents the leader names warm standbys (pure), and the listener a standby keeps."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from nodefence.agent.leader.ingest_loop import Listener
from nodefence.agent.leader.standby_loop import WarmListener, choose_standbys
from tests.support.wait import eventually

NODES = [f"node-{i}" for i in range(1, 8)]


@pytest.mark.parametrize(
    ("previous", "healthy", "leader", "count", "expected"),
    [
        # named before and still healthy: kept, in their order (they keep their history)
        (["node-5", "node-2"], NODES, "node-1", 2, ("node-5", "node-2")),
        # one fell silent: it is replaced, the other kept
        (["node-5", "node-2"], [n for n in NODES if n != "node-5"], "node-1", 2, ("node-2",)),
        # the leader is never its own standby (it was one before it took the Lease)
        (["node-1", "node-2"], NODES, "node-1", 2, ("node-2",)),
        # fewer healthy nodes than places: all of them
        ([], ["node-1", "node-2"], "node-1", 2, ("node-2",)),
        # no standbys wanted
        (["node-2"], NODES, "node-1", 0, ()),
        # fewer places than before: the first ones stay
        (["node-5", "node-2", "node-3"], NODES, "node-1", 2, ("node-5", "node-2")),
    ],
)
def test_named_standbys_stay_while_healthy_and_never_include_the_leader(
    previous: list[str],
    healthy: list[str],
    leader: str,
    count: int,
    expected: tuple[str, ...],
) -> None:
    chosen = choose_standbys(previous, healthy, leader, count)
    assert chosen[: len(expected)] == expected
    assert len(chosen) == min(count, len(set(healthy) - {leader}))
    assert leader not in chosen and set(chosen) <= set(healthy)
    assert len(set(chosen)) == len(chosen)


def test_free_places_go_to_healthy_nodes_in_a_fixed_order_not_by_name() -> None:
    first = choose_standbys([], NODES, "node-1", 2)
    assert first == choose_standbys([], list(reversed(NODES)), "node-1", 2)  # input order moot
    assert len(first) == 2 and "node-1" not in first
    many = {choose_standbys([], NODES, leader, 1)[0] for leader in NODES}
    assert len(many) > 1  # not always the same node


class CountingListener:
    """Stands for a Listener: counts runs, runs until cancelled."""

    runs = 0
    running = 0

    async def run(self) -> None:
        CountingListener.runs += 1
        CountingListener.running += 1
        try:
            await asyncio.Event().wait()
        finally:
            CountingListener.running -= 1


async def test_a_standby_listens_while_named_or_leading_and_a_leader_takes_that_listener() -> None:
    named = {"standby": False, "leading": False}
    made: list[CountingListener] = []

    def make() -> Listener:
        made.append(CountingListener())
        return cast(Listener, made[-1])

    warm = WarmListener(make, lambda: named["standby"], lambda: named["leading"], period=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(warm.run(stop))
    try:
        await asyncio.sleep(0.05)
        assert not made  # cold: listens to nobody

        named["standby"] = True
        await eventually("listening", lambda: CountingListener.running == 1)
        listener = warm.take()  # it takes the Lease: the leader side adopts the same listener
        assert listener is made[0] and len(made) == 1

        named.update(standby=False, leading=True)  # a leader is no longer named a standby
        await asyncio.sleep(0.05)
        assert CountingListener.running == 1 and len(made) == 1  # kept while leading

        named["leading"] = False  # lost the Lease, not named again
        await eventually("stopped", lambda: CountingListener.running == 0)

        named["leading"] = True  # it takes the Lease again, cold this time
        fresh = warm.take()  # ... so the leader side starts a listener now
        assert fresh is made[1]
        await eventually("cold listener running", lambda: CountingListener.running == 1)
        await asyncio.sleep(0.05)
        assert CountingListener.running == 1 and len(made) == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert CountingListener.running == 0
