"""The API emulator counts what each client costs it (`nodefence.hwsim.kube.traffic`), by
User-Agent: requests, the bytes it sent (watch events included), watches open, and quorum lists
apart from lists a real server answers from its watch cache."""

from __future__ import annotations

import json
import urllib.request

from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.kube.node_objects import kubelet_node
from tests.support.wait import eventually_blocking


def get(kube: KubeApiServer, path: str, agent: str) -> bytes:
    request = urllib.request.Request(kube.url + path, headers={"User-Agent": agent})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
    return body


def test_a_list_without_resource_version_is_counted_as_a_quorum_read(kube: KubeApiServer) -> None:
    kube.store.create("nodes", kubelet_node("node-1", 1))
    quorum = get(kube, "/api/v1/nodes", "poller")
    cached = get(kube, "/api/v1/nodes?resourceVersion=0", "informer")
    seen = kube.traffic.snapshot()
    assert (seen["poller"].lists, seen["poller"].quorum_lists) == (1, 1)
    assert (seen["informer"].lists, seen["informer"].quorum_lists) == (1, 0)
    assert seen["poller"].bytes_out == len(quorum)
    assert seen["informer"].bytes_out == len(cached)


def test_a_realistic_node_is_the_size_of_a_real_kubelets(kube: KubeApiServer) -> None:
    kube.store.create("nodes", kubelet_node("node-1", 1))
    size = len(get(kube, "/api/v1/nodes/node-1", "reader"))
    assert 10_000 <= size <= 30_000


def test_watch_events_are_counted_as_bytes_sent_to_the_watcher(kube: KubeApiServer) -> None:
    kube.store.create("nodes", {"metadata": {"name": "node-1"}})
    rv = json.loads(get(kube, "/api/v1/nodes", "setup"))["metadata"]["resourceVersion"]
    request = urllib.request.Request(
        f"{kube.url}/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=5",
        headers={"User-Agent": "watcher"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        kube.store.create("nodes", {"metadata": {"name": "node-2"}})
        line = response.readline()
        assert json.loads(line)["type"] == "ADDED"
        eventually_blocking(
            "the event's bytes counted",
            lambda: kube.traffic.snapshot()["watcher"].bytes_out >= len(line),
        )
        seen = kube.traffic.snapshot()["watcher"]
        assert (seen.watches, seen.open_watches, seen.requests) == (1, 1, 1)
    kube.close_watches()
    eventually_blocking(
        "the closed watch no longer counted open",
        lambda: not kube.traffic.snapshot()["watcher"].open_watches,
    )
