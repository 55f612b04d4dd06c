"""The API emulator's write faults: a FenceOperation save that lands but is never answered in
time (or whose connection drops), seen through nodefence's own `ClusterApi` over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.kube.writefaults import AppliedWrite, WriteFault
from nodefence.hwsim.simcluster_settings import CRD_PATHS
from tests.support.kube import kube_server, official_client

NS = "nodefence"


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with kube_server(namespaces=[NS], crds=[CRD_PATHS[0]]) as srv:
        yield srv


@pytest_asyncio.fixture
async def api(server: KubeApiServer) -> AsyncIterator[ClusterApi]:
    with official_client(server) as api_client:
        yield ClusterApi(api_client, timeout=0.5)


def record(name: str = "fence-node-3-a", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nodefence.io/v1alpha1",
        "kind": "FenceOperation",
        "metadata": {"name": name, "namespace": NS, "labels": {"nodefence.io/node": "node-3"}},
        "spec": {"nodeName": "node-3", "operationId": "a", "action": "off"},
        "status": {"phase": "Pending", "powerOffSent": False, **status},
    }


def on_records(fault: WriteFault, seen: list[AppliedWrite]) -> Any:
    def hook(write: AppliedWrite) -> WriteFault | None:
        seen.append(write)
        return fault if write.resource == "fenceoperations" else None

    return hook


async def test_a_record_save_that_lands_but_answers_late_is_a_timeout_and_is_stored(
    server: KubeApiServer, api: ClusterApi
) -> None:
    seen: list[AppliedWrite] = []
    server.write_hook = on_records(WriteFault(hold=1.5), seen)
    started = time.monotonic()
    # The client's read timeout or ClusterApi's deadline, whichever comes first.
    with pytest.raises(ClusterError, match=r"timed out|no answer within") as caught:
        await api.save_record(NS, record())
    assert caught.value.status is None and time.monotonic() - started < 1.4
    stored = server.store.get("fenceoperations", "fence-node-3-a", NS)
    assert stored["spec"]["nodeName"] == "node-3"  # it landed
    assert [(w.verb, w.resource, w.name) for w in seen] == [
        ("create", "fenceoperations", "fence-node-3-a")
    ]
    assert seen[0].obj["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    # The writer never learnt the resourceVersion: its next write of the same record conflicts.
    server.write_hook = None
    with pytest.raises(ClusterError) as again:
        await api.save_record(NS, record())
    assert again.value.status == 409


async def test_a_dropped_answer_is_a_connection_error_and_the_write_stands(
    server: KubeApiServer, api: ClusterApi
) -> None:
    seen: list[AppliedWrite] = []
    server.write_hook = on_records(WriteFault(drop=True), seen)
    with pytest.raises(ClusterError) as caught:
        await api.save_record(NS, record())
    assert caught.value.status is None
    assert "timed out" not in str(caught.value) and "no answer" not in str(caught.value), caught
    assert server.store.get("fenceoperations", "fence-node-3-a", NS)
    assert len(seen) == 1


async def test_before_answer_runs_after_the_write_and_before_the_client_hears_of_it(
    server: KubeApiServer, api: ClusterApi
) -> None:
    order: list[str] = []
    answered = threading.Event()

    def kill_the_writer() -> None:
        stored = server.store.get("fenceoperations", "fence-node-3-a", NS)
        order.append(f"stored {stored['metadata']['name']}; client answered: {answered.is_set()}")

    server.write_hook = on_records(WriteFault(before_answer=kill_the_writer), [])
    saved = await api.save_record(NS, record())
    answered.set()
    assert order == ["stored fence-node-3-a; client answered: False"]
    assert saved["metadata"]["resourceVersion"]


async def test_reads_and_refused_writes_never_reach_the_hook(
    server: KubeApiServer, api: ClusterApi
) -> None:
    server.store.create("fenceoperations", record(), NS)
    seen: list[AppliedWrite] = []
    server.write_hook = on_records(WriteFault(hold=5.0), seen)
    assert [r["metadata"]["name"] for r in await api.list_records(NS)] == ["fence-node-3-a"]
    with pytest.raises(ClusterError) as caught:
        await api.save_record(NS, record())  # AlreadyExists: refused, answered at once
    assert caught.value.status == 409
    assert seen == []
