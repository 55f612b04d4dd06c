"""The typed Kubernetes errors (`nodefence.agent.kube.errors`): a failed call is raised as the class
its status stands for, wherever it is built (the client's request path, the simulated API server,
a test's fake), and the status stays on it for messages and metrics."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from nodefence.agent.kube.client import (
    ClusterApi,
    ClusterError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    TooManyRequests,
    load_api_client,
)
from nodefence.agent.kube.errors import api_error
from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.sim.api import ApiChaos, SimClusterApi
from nodefence.hwsim.sim.apiserver import ApiServer
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import VirtualLoop


def api_exception(status: int, reason: str, body: dict[str, Any] | None = None) -> ApiException:
    err = ApiException(status=status, reason=reason)
    err.body = json.dumps(body) if body is not None else None
    return err


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (429, TooManyRequests),
        (500, ClusterError),
        (503, ClusterError),
    ],
)
def test_an_api_failure_is_raised_as_the_error_its_status_stands_for(
    status: int, kind: type[ClusterError]
) -> None:
    err = api_error("read node n1", api_exception(status, "Why"))
    assert type(err) is kind and err.status == status
    assert str(err) == f"read node n1: {status} Why"


def test_an_error_built_with_a_status_anywhere_is_of_its_type() -> None:
    assert type(ClusterError("update lease: 409 Conflict", 409)) is Conflict
    assert NotFound("read node n1: gone").status == 404
    assert type(ClusterError("no answer within 5 s")) is ClusterError
    assert ClusterError("no answer within 5 s").status is None


def test_a_refusal_carries_the_servers_words_in_the_message_only_when_asked() -> None:
    body = {"message": "Cannot evict pod", "details": {"causes": [{"message": "budget: 0 left"}]}}
    plain = api_error("evict pod a/b", api_exception(429, "Too Many Requests", body))
    said = api_error("create op a/b", api_exception(422, "Unprocessable", body), refusal=True)
    assert isinstance(plain, TooManyRequests) and plain.refusal == "budget: 0 left"
    assert str(plain) == "evict pod a/b: 429 Too Many Requests"
    assert str(said) == "create op a/b: 422 Unprocessable: budget: 0 left"


def test_a_connection_failure_is_a_cluster_error_without_a_status() -> None:
    err = api_error("list nodes", ConnectionRefusedError("refused"))
    assert type(err) is ClusterError and err.status is None
    assert str(err) == "list nodes: ConnectionRefusedError: refused"


# -- the real client over HTTP ------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ClusterApi]:
    server = KubeApiServer()
    server.start_in_thread()
    try:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        yield ClusterApi(load_api_client(str(tmp_path / "kubeconfig")))
    finally:
        server.stop_thread()


async def test_the_client_raises_conflict_for_a_stale_lease_and_not_found_for_a_missing_node(
    api: ClusterApi,
) -> None:
    now = dt.datetime.now(dt.UTC)

    async def write(holder: str, version: str | None) -> str:
        lease = await api.write_lease(
            "default",
            "l",
            holder=holder,
            duration=15,
            renew=now,
            acquire=now,
            transitions=0,
            resource_version=version,
        )
        return lease.resource_version

    first = await write("a", None)
    await write("b", first)  # another holder now: a new resourceVersion
    with pytest.raises(Conflict) as stale:
        await write("a", first)
    assert stale.value.status == 409
    with pytest.raises(NotFound):
        await api.annotate_node("nowhere", "k", "v")
    assert await api.get_node("nowhere") is None


# -- the simulated client raises the same types ------------------------------------------------


def sim_api() -> tuple[VirtualLoop, SimClusterApi]:
    loop = VirtualLoop()
    return loop, SimClusterApi(ApiServer(loop, Trace(loop.time)), random.Random(3))


def test_the_simulated_api_refuses_a_stale_record_with_conflict() -> None:
    loop, api = sim_api()
    body: dict[str, Any] = {"metadata": {"name": "r1", "labels": {}}, "spec": {"nodeName": "n"}}

    async def main() -> ClusterError | None:
        first = await api.save_record("ns", body)
        await api.save_record("ns", first)
        try:
            await api.save_record("ns", first)  # its resourceVersion is stale now
        except ClusterError as err:
            return err
        return None

    assert isinstance(loop.run_until_complete(main()), Conflict)
    loop.close()


def test_the_simulated_api_chaos_throttles_with_too_many_requests() -> None:
    loop, api = sim_api()
    api.chaos, api.chaos_until = ApiChaos(error=1.0), 100.0

    async def main() -> list[ClusterError]:
        seen: list[ClusterError] = []
        for _ in range(30):
            try:
                await api.list_nodes()
            except ClusterError as err:
                seen.append(err)
        return seen

    errors = loop.run_until_complete(main())
    assert len(errors) == 30 and {e.status for e in errors} == {429, 500, 503}
    assert all(isinstance(e, TooManyRequests) == (e.status == 429) for e in errors)
    loop.close()
