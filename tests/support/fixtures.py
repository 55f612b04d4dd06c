"""Fixtures every test module may ask for (registered in tests/conftest.py): the servers
tests run against, each on a free 127.0.0.1 port and stopped even on failure.

A module that needs a variant (another namespace, CRDs, a faster bookmark) defines a fixture of
the same name from the same helpers (`tests.support.kube.kube_server`); pytest takes the
module's own over this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.tls import TlsFiles, make_tls
from tests.support.brokers import running_broker
from tests.support.kube import AGENT_NAMESPACE, kube_server, official_client


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    """The Kubernetes API emulator with the agent's namespace (its Lease, Events, records)."""
    with kube_server(namespaces=[AGENT_NAMESPACE]) as server:
        yield server


@pytest.fixture
def kube_api(kube: KubeApiServer) -> Iterator[client.ApiClient]:
    """The official client's `ApiClient` on `kube`."""
    with official_client(kube) as api_client:
        yield api_client


@pytest.fixture
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    """The official client's core/v1 API on `kube`."""
    return client.CoreV1Api(kube_api)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto broker without logins."""
    with running_broker(tmp_path / "mqtt") as mqtt:
        yield mqtt


@pytest.fixture
def broker_b(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A second mosquitto broker without logins."""
    with running_broker(tmp_path / "mqtt-b") as mqtt:
        yield mqtt


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it (one per module)."""
    return make_tls(tmp_path_factory.mktemp("tls"))
