"""FenceOperation records of any node name: the agent saves and finds them with the official
client over HTTP against the API emulator, which refuses invalid labels as a real server does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.fencing.operation import Operation, Phase
from nodefence.agent.fencing.records import from_record, record_name, to_record
from nodefence.agent.heartbeat.codec import valid_name
from nodefence.agent.kube.client import ClusterApi
from nodefence.agent.kube.node_label import NODE_LABEL, node_label_value, valid_label_value
from nodefence.agent.maintenance.vm_migration import VMOP_NODE_LABEL, vmop_body
from nodefence.hwsim.kube.labels import value_problems
from tests.support.kube import cluster_api_of, kube_server

CRD = Path(__file__).resolve().parents[2] / "deploy" / "base" / "crd-fenceoperations.yaml"
NAMESPACE = "nodefence"
# The longest node name there can be: a DNS-1123 subdomain of 253 characters.
LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
assert len(LONGEST) == 253


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ClusterApi]:
    with kube_server(crds=[CRD], namespaces=[NAMESPACE]) as server:
        yield cluster_api_of(server, tmp_path)


async def test_the_record_of_a_253_character_node_name_is_saved_and_found(api: ClusterApi) -> None:
    op = Operation(node=LONGEST, id="0123abcd", phase=Phase.FENCING, power_off_sent=True)

    await api.save_record(NAMESPACE, to_record(op, NAMESPACE, "leader-1"))

    found = await api.list_records(NAMESPACE, LONGEST)
    assert [from_record(r) for r in found] == [from_record(to_record(op, NAMESPACE, "x"))]
    assert found[0]["spec"]["nodeName"] == LONGEST


async def test_long_node_names_sharing_a_long_prefix_each_find_only_their_own_records(
    api: ClusterApi,
) -> None:
    twin = LONGEST[:-1] + "e"
    ops = [Operation(node=n, id=i) for n in (LONGEST, twin) for i in ("op1", "op2")]
    for op in ops:
        await api.save_record(NAMESPACE, to_record(op, NAMESPACE, "leader-1"))

    for node in (LONGEST, twin):
        found = await api.list_records(NAMESPACE, node)
        assert sorted(from_record(r).id for r in found) == ["op1", "op2"]
        assert {r["spec"]["nodeName"] for r in found} == {node}
    assert len(await api.list_records(NAMESPACE)) == 4


# -- the label value and the record name (pure) ------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
NODE_NAMES = st.one_of(
    st.from_regex(rf"{_DNS_LABEL}(\.{_DNS_LABEL}){{0,3}}", fullmatch=True),
    # long names: a few long labels, up to 253 characters and past 63 most of the time
    st.lists(st.sampled_from(["a" * 63, "b" * 40, "x-9", "7"]), min_size=1, max_size=5).map(
        ".".join
    ),
).filter(valid_name)


@pytest.mark.parametrize(
    ("node", "label"),
    [
        ("worker-1", "worker-1"),
        ("n" * 63, "n" * 63),
        ("node-1.example.com", "node-1.example.com"),
    ],
)
def test_a_name_that_is_a_valid_label_value_is_its_own_label(node: str, label: str) -> None:
    assert node_label_value(node) == label


@pytest.mark.parametrize("node", ["n" * 64, LONGEST], ids=["64 characters", "253 characters"])
def test_a_longer_name_gets_a_hash_label_the_api_server_accepts(node: str) -> None:
    label = node_label_value(node)
    assert label.startswith("sha256_") and len(label) == 63
    assert value_problems(label) == []  # the emulator's copy of the real server's rule
    assert not valid_name(label)  # '_': never the name, or label, of another node


@given(NODE_NAMES, NODE_NAMES)
def test_every_node_name_has_a_valid_label_value_of_its_own(a: str, b: str) -> None:
    assert valid_label_value(node_label_value(a))
    assert value_problems(node_label_value(a)) == []
    assert (node_label_value(a) == node_label_value(b)) == (a == b)


@given(NODE_NAMES, st.sampled_from(["0123abcd", "x", "Upper_Case.ID", "9" * 40]))
def test_every_record_name_is_valid_and_keeps_the_operation_apart(node: str, op_id: str) -> None:
    name = record_name(Operation(node=node, id=op_id))
    assert valid_name(name) and name.startswith("fence-")
    other = record_name(Operation(node=node, id=op_id + "1"))
    assert other != name


def test_a_short_name_keeps_its_readable_record_name_and_label() -> None:
    op = Operation(node="worker-1", id="0123abcd")
    record = to_record(op, NAMESPACE, "leader-1")
    assert record["metadata"]["name"] == "fence-worker-1-0123abcd"
    assert record["metadata"]["labels"] == {NODE_LABEL: "worker-1"}


def test_the_maintenance_label_of_a_long_node_name_is_valid_too() -> None:
    labels = vmop_body("ns", "vm", "migrate-vm-1", node=LONGEST)["metadata"]["labels"]
    assert labels == {VMOP_NODE_LABEL: node_label_value(LONGEST)}
    assert value_problems(labels[VMOP_NODE_LABEL]) == []
