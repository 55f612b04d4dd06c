"""The simulated broker routes as MQTT does, whichever way a subscription is matched.

A subscription without wildcards is matched by its topic alone, one with wildcards against
every topic; both must see the retained message of each matching topic on subscribe, every
later publish in order, and nothing once their client is gone."""

from __future__ import annotations

import asyncio
import contextvars
import random

import pytest

from nodefence.hwsim.sim.broker import SimBroker, topic_matches
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import VirtualLoop

TOPICS = ["c/heartbeat/n1", "c/heartbeat/n2", "c/status/n1", "$SYS/load", "c/heartbeat"]
FILTERS = ["c/heartbeat/n1", "c/heartbeat/+", "c/#", "#", "+/status/n1", "c/heartbeat", "$SYS/load"]


def run(loop: VirtualLoop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


@pytest.mark.parametrize("filt", FILTERS)
def test_a_subscription_hears_exactly_the_topics_its_filter_matches(filt: str) -> None:
    loop = VirtualLoop()
    broker = SimBroker(loop, random.Random(1), Trace(loop.time))
    publisher = broker.connect("pub")
    assert publisher is not None
    broker.publish(publisher, "c/heartbeat/n1", b"retained-1", retain=True)
    broker.publish(publisher, "c/status/n1", b"retained-2", retain=True)
    for topic in TOPICS:  # every topic has a route before the subscription comes
        broker.publish(publisher, topic, b"early")
    heard: list[tuple[str, bytes]] = []
    client = broker.connect("sub")
    assert client is not None
    broker.subscribe(client, filt, lambda t, p: heard.append((t, p)), contextvars.copy_context())
    for i, topic in enumerate(TOPICS):
        broker.publish(publisher, topic, f"m{i}".encode())
    run(loop, 1.0)
    retained = [
        (t, p)
        for t, p in [("c/heartbeat/n1", b"retained-1"), ("c/status/n1", b"retained-2")]
        if topic_matches(filt, t)
    ]
    later = [(t, f"m{i}".encode()) for i, t in enumerate(TOPICS) if topic_matches(filt, t)]
    assert heard == retained + later
    broker.drop(client, "gone")
    for topic in TOPICS:
        broker.publish(publisher, topic, b"late")
    run(loop, 1.0)
    assert heard == retained + later
    loop.close()
