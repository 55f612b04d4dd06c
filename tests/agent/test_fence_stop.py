"""The typed stop reason of a power walk (`nodefence.agent.fencing.stop`): the guard says why it
stopped by kind (the executor decides on the kind: a lost Lease, a pause), and with the words
records and logs have always carried."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from nodefence.agent.fencing.guard_client import WalkGuard
from nodefence.agent.fencing.machine import NodeAlive, Operation, Timing
from nodefence.agent.fencing.power_executor import StopWalk
from nodefence.agent.fencing.stop import StopKind
from nodefence.agent.fencing.store_client import RecordStore
from nodefence.agent.kube.client import ClusterApi


def guard(
    *,
    leader: bool = True,
    alive: str | None = None,
    pause: str | None = None,
) -> WalkGuard:
    async def confirm() -> None:
        if not leader:
            raise RuntimeError("the Lease is held by node-2")

    unused: Any = object()  # nothing is stored or read before these stops
    return WalkGuard(
        Operation(node="n1", id="op1"),
        10.0,
        confirm_leader=confirm,
        alive_since=lambda node, since: alive,
        in_maintenance=lambda node: False,
        store=cast(RecordStore, unused),
        api=cast(ClusterApi, unused),
        clock=lambda: 20.0,
        timing=Timing(),
        paused=lambda: pause,
    )


Check = Callable[[WalkGuard], bool]


@pytest.mark.parametrize(
    ("g", "kind", "text", "check"),
    [
        (
            guard(leader=False),
            StopKind.LEASE_LOST,
            "not the leader any more: the Lease is held by node-2",
            lambda g: g.lost_lease and g.stopped is None and not g.stopped_by_pause,
        ),
        (
            guard(pause="paused by alice"),
            StopKind.PAUSED,
            "fencing is paused by alice",
            lambda g: g.stopped_by_pause and g.stopped is None and not g.lost_lease,
        ),
        (
            guard(alive="heartbeat received 0.5 s ago"),
            StopKind.NODE_ALIVE,
            "node came back (heartbeat received 0.5 s ago)",
            lambda g: g.stopped == NodeAlive("heartbeat received 0.5 s ago"),
        ),
    ],
    ids=["lease-lost", "paused", "node-alive"],
)
async def test_a_stopped_walk_says_why_by_kind_and_in_the_words_it_always_used(
    g: WalkGuard, kind: StopKind, text: str, check: Check
) -> None:
    with pytest.raises(StopWalk) as stopped:
        await g("power-off")
    assert stopped.value.reason.kind is kind and g.stop == stopped.value.reason
    assert str(stopped.value) == text
    assert check(g)
