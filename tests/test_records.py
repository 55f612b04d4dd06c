"""FenceOperation records of any node name: the agent saves and finds them with the official
client over HTTP against the API emulator, which refuses invalid labels as a real server does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.cluster import ClusterApi, load_api_client
from agent.fencing import Operation, Phase
from agent.records import from_record, to_record
from hwsim.kube import KubeApiServer

CRD = Path(__file__).resolve().parents[1] / "deploy" / "base" / "crd-fenceoperations.yaml"
NAMESPACE = "nodefence"
# The longest node name there can be: a DNS-1123 subdomain of 253 characters.
LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
assert len(LONGEST) == 253


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ClusterApi]:
    server = KubeApiServer()
    server.start_in_thread()
    try:
        server.store.create("customresourcedefinitions", yaml.safe_load(CRD.read_text()))
        server.store.create("namespaces", {"metadata": {"name": NAMESPACE}})
        server.write_kubeconfig(tmp_path / "kubeconfig")
        yield ClusterApi(load_api_client(str(tmp_path / "kubeconfig")))
    finally:
        server.stop_thread()


async def test_the_record_of_a_253_character_node_name_is_saved_and_found(api: ClusterApi) -> None:
    op = Operation(node=LONGEST, id="0123abcd", phase=Phase.FENCING, power_off_sent=True)

    await api.save_record(NAMESPACE, to_record(op, NAMESPACE, "leader-1"))

    found = await api.list_records(NAMESPACE, LONGEST)
    assert [from_record(r) for r in found] == [from_record(to_record(op, NAMESPACE, "x"))]
    assert found[0]["spec"]["nodeName"] == LONGEST
