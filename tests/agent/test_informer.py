"""Informer caches (`nodefence.agent.kube.informer_loop`): the pure cache never goes back in time,
and an informer over the Kubernetes API emulator lists once, then follows by watch, and lists again
after a 410 (the emulator's compaction) without missing what changed while it was away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodefence.agent.kube.cache_watch import NODES
from nodefence.agent.kube.client import ClusterApi, NodeInfo
from nodefence.agent.kube.informer_loop import Cache, Change, Informer
from nodefence.hwsim.kube import KubeApiServer
from tests.support.kube import cluster_api_of, kube_server
from tests.support.wait import eventually


def node(name: str, version: str, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": version},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


# -- the pure cache ------------------------------------------------------------------------------


def test_a_list_takes_every_object_and_drops_those_it_no_longer_has() -> None:
    cache: Cache[NodeInfo] = Cache(NODES)
    cache.replace([node("a", "1"), node("b", "2")], "2")
    changes = cache.replace([node("a", "1"), node("c", "5")], "5")
    assert sorted((c.key, c.old is None, c.new is None) for c in changes) == [
        ("b", False, True),
        ("c", True, False),
    ]
    assert sorted(cache.items) == ["a", "c"]
    assert cache.resource_version == "5"


def test_an_event_older_than_the_copy_held_changes_nothing() -> None:
    cache: Cache[NodeInfo] = Cache(NODES)
    cache.replace([node("a", "7", ready="False")], "7")
    assert cache.apply("MODIFIED", node("a", "6", ready="True")) is None
    assert cache.items["a"].ready is False
    assert cache.apply("DELETED", node("a", "5")) is None
    assert "a" in cache.items


def test_a_newer_event_replaces_the_copy_and_says_what_it_was() -> None:
    cache: Cache[NodeInfo] = Cache(NODES)
    cache.replace([node("a", "7", ready="True")], "7")
    change = cache.apply("MODIFIED", node("a", "9", ready="False"))
    assert change is not None and change.old is not None and change.new is not None
    assert (change.old.ready, change.new.ready) == (True, False)
    assert cache.resource_version == "9"


def test_a_bookmark_moves_the_version_on_and_changes_no_object() -> None:
    cache: Cache[NodeInfo] = Cache(NODES)
    cache.replace([node("a", "7")], "7")
    assert cache.apply("BOOKMARK", {"metadata": {"resourceVersion": "42"}}) is None
    assert cache.resource_version == "42" and list(cache.items) == ["a"]


def test_a_copy_offered_from_a_fresh_read_is_kept_over_an_older_watch_event() -> None:
    cache: Cache[NodeInfo] = Cache(NODES)
    cache.replace([node("a", "7", ready="True")], "7")
    assert cache.offer(node("a", "9", ready="False")) is not None
    assert cache.apply("MODIFIED", node("a", "8", ready="True")) is None  # late event
    assert cache.items["a"].ready is False
    assert cache.resource_version == "8"  # the cache's own version is the stream's


# -- over the emulator ---------------------------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with kube_server(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api(kube: KubeApiServer, tmp_path: Path) -> ClusterApi:
    return cluster_api_of(kube, tmp_path, "informer-test")


async def running(informer: Informer[Any], body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(informer.run())
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ready_of(informer: Informer[NodeInfo], name: str) -> bool | None:
    found = informer.items().get(name)
    return found.ready if found is not None else None


async def test_an_informer_lists_once_then_follows_changes_by_watch(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    kube.store.create("nodes", {"metadata": {"name": "w1"}})
    seen: list[Change[NodeInfo]] = []
    informer: Informer[NodeInfo] = Informer(
        api, NODES, clock=time.monotonic, on_change=lambda c, since, now: seen.extend(c)
    )

    async def body() -> None:
        await eventually("first list", informer.synced.is_set, timeout=10.0)
        await eventually("watching", lambda: informer.watching, timeout=10.0)
        kube.store.create("nodes", {"metadata": {"name": "w2"}})
        patch = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        kube.store.patch("nodes", "w1", patch, subresource="status")
        await eventually(
            "w2 and w1's change seen", lambda: ready_of(informer, "w1") is False, timeout=10.0
        )
        await eventually("w2 seen", lambda: "w2" in informer.items(), timeout=10.0)
        await eventually("a bookmark", lambda: informer.stats.bookmarks > 0, timeout=10.0)
        kube.store.delete("nodes", "w2")
        await eventually("w2's deletion seen", lambda: "w2" not in informer.items(), timeout=10.0)

    await running(informer, body)
    assert informer.stats.lists == 1
    assert [c.key for c in seen][:1] == ["w1"]
    lists = [r for r in kube.requests if r.verb == "list" and r.resource == "nodes"]
    assert len(lists) == 1
    assert kube.traffic.snapshot()["informer-test"].quorum_lists == 0  # resourceVersion=0


async def test_after_a_410_the_informer_lists_again_and_misses_nothing(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    kube.store.create("nodes", {"metadata": {"name": "w1"}})
    informer: Informer[NodeInfo] = Informer(api, NODES, clock=time.monotonic, retry_min=0.05)

    async def body() -> None:
        await eventually("watching", lambda: informer.watching, timeout=10.0)
        kube.close_watches()
        kube.store.create("nodes", {"metadata": {"name": "w-while-away"}})
        kube.store.delete("nodes", "w1")
        kube.store.compact()  # the watch's version is gone: 410 when it comes back
        await eventually("relisted", lambda: informer.stats.lists >= 2, timeout=10.0)
        await eventually(
            "the change made while away", lambda: "w-while-away" in informer.items(), timeout=10.0
        )

    await running(informer, body)
    assert informer.stats.gone >= 1
    assert "w1" not in informer.items()
