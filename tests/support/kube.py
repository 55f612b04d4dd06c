"""The Kubernetes API emulator in a test: started with what a test needs, stopped even on
failure, and the clients tests talk to it with."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from nodefence.agent.kube.client import ClusterApi, load_api_client
from nodefence.hwsim.kube import KubeApiServer

AGENT_NAMESPACE = "nodefence"  # where the agent keeps its Lease, Events and fence records


@contextmanager
def kube_server(
    *, namespaces: Iterable[str] = (), crds: Iterable[Path] = (), **settings: Any
) -> Iterator[KubeApiServer]:
    """A `KubeApiServer(**settings)` in its thread on a free loopback port, with the CRDs (YAML
    files) and namespaces created; stopped when the block ends."""
    server = KubeApiServer(**settings)
    server.start_in_thread()
    try:
        for crd in crds:
            server.store.create("customresourcedefinitions", yaml.safe_load(crd.read_text()))
        for name in namespaces:
            server.store.create("namespaces", {"metadata": {"name": name}})
        yield server
    finally:
        server.stop_thread()


@contextmanager
def official_client(server: KubeApiServer) -> Iterator[client.ApiClient]:
    """The official client's `ApiClient` pointed at `server` (no kubeconfig), closed after."""
    cfg = client.Configuration()
    cfg.host = server.url
    with client.ApiClient(cfg) as api_client:
        yield api_client


def cluster_api_of(server: KubeApiServer, workdir: Path, user_agent: str = "") -> ClusterApi:
    """The agent's `ClusterApi` on `server`, through a kubeconfig written into `workdir`."""
    kubeconfig = workdir / "kubeconfig"
    server.write_kubeconfig(kubeconfig)
    return ClusterApi(load_api_client(str(kubeconfig), user_agent))
