"""The API emulator checks label keys and values as a real API server does: 422 Invalid on
create, update and every kind of patch, 400 for a selector naming an invalid value; witnessed
by the official client over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nodefence.hwsim.kube import (
    JSON_PATCH,
    MERGE,
    STRATEGIC,
    BadRequest,
    Invalid,
    KubeApiServer,
    ObjectStore,
)
from tests.support.kube import kube_server

CRD = Path(__file__).resolve().parents[2] / "deploy" / "base" / "crd-fenceoperations.yaml"
LONG = "a" * 64
QUALIFIED = "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'"
SUBDOMAIN = "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'"
VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or"
    " '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or"
    " 'my_value',  or '12345', regex used for validation is"
    " '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
NAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an"
    " alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for"
    f" validation is {QUALIFIED})"
)
PREFIX_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex"
    f" used for validation is {SUBDOMAIN})"
)


def node(labels: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "labels": labels}}


# -- the rules, on the store -------------------------------------------------------------------

INVALID = [
    # (case, labels, the bad string shown, what the server says about it)
    ("value over 63", {"k": LONG}, LONG, "must be no more than 63 characters"),
    ("value with a space", {"k": "a b"}, "a b", VALUE_RULE),
    ("value starting with a dash", {"k": "-a"}, "-a", VALUE_RULE),
    ("key with a bang", {"bad key!": "v"}, "bad key!", f"name part {NAME_RULE}"),
    ("key name part over 63", {f"x.io/{LONG}": "v"}, f"x.io/{LONG}",
     "name part must be no more than 63 characters"),
    ("key prefix not a subdomain", {"Example.com/k": "v"}, "Example.com/k",
     f"prefix part {PREFIX_RULE}"),
    ("key prefix over 253", {f"{'a' * 254}/k": "v"}, f"{'a' * 254}/k",
     "prefix part must be no more than 253 characters"),
    ("key with two slashes", {"a/b/c": "v"}, "a/b/c",
     f"a qualified name {NAME_RULE} with an optional DNS subdomain prefix and '/' (e.g."
     " 'example.com/MyName')"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "shown", "detail"), [pytest.param(*c[1:], id=c[0]) for c in INVALID]
)
def test_an_invalid_label_is_refused_as_the_real_server_words_it(
    labels: dict[str, str], shown: str, detail: str
) -> None:
    store = ObjectStore()
    with pytest.raises(Invalid) as err:
        store.create("nodes", node(labels))
    status = err.value.status()
    body = f'Invalid value: "{shown}": {detail}'
    assert status["message"] == f'Node "n1" is invalid: metadata.labels: {body}'
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": body, "field": "metadata.labels"}
    ]
    assert store.list("nodes")["items"] == []


def test_an_empty_key_gets_both_of_the_real_servers_complaints() -> None:
    with pytest.raises(Invalid) as err:
        ObjectStore().create("nodes", node({"": "v"}))
    assert err.value.message == (
        'Node "n1" is invalid: [metadata.labels: Invalid value: "": name part must be'
        f' non-empty, metadata.labels: Invalid value: "": name part {NAME_RULE}]'
    )
    assert len(err.value.causes) == 2


@pytest.mark.parametrize(
    "labels",
    [
        {"k": ""},
        {"k": "a" * 63},
        {"k": "My_Value.1-x"},
        {"nodefence.io/node": "n1"},
        {f"{'a' * 253}/{'b' * 63}": "v"},
        {"kubernetes.io/hostname": "node-1", "app.kubernetes.io/name": "nodefence"},
    ],
    ids=["empty value", "63 characters", "mixed case", "prefixed", "longest key", "several"],
)
def test_valid_labels_are_stored(labels: dict[str, str]) -> None:
    stored = ObjectStore().create("nodes", node(labels))
    assert stored["metadata"]["labels"] == labels


def test_a_label_value_that_is_not_a_string_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"cannot unmarshal number into .*metadata\.labels"):
        ObjectStore().create("nodes", node({"k": 1}))


# -- over HTTP, with the official client -------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with kube_server(crds=[CRD], namespaces=["nodefence"]) as server:
        yield server


def refused(call: Any) -> dict[str, Any]:
    """The Status body of a call that must fail."""
    with pytest.raises(client.ApiException) as err:
        call()
    body: dict[str, Any] = json.loads(err.value.body)
    assert err.value.status == body["code"]
    return body


def test_create_update_and_every_patch_with_a_long_label_value_are_422(
    kube_api: client.ApiClient,
) -> None:
    core = client.CoreV1Api(kube_api)
    long_label = {"metadata": {"labels": {"zone": LONG}}}
    expected = f'Node "n1" is invalid: metadata.labels: Invalid value: "{LONG}": must be no more'
    expected += " than 63 characters"

    assert refused(lambda: core.create_node(node({"zone": LONG})))["message"] == expected
    created = core.create_node(node({"zone": "a"}))

    whole = kube_api.sanitize_for_serialization(created)
    whole["metadata"]["labels"]["zone"] = LONG
    assert refused(lambda: core.replace_node("n1", whole))["message"] == expected
    assert refused(lambda: core.patch_node("n1", long_label))["message"] == expected
    json_patch = [{"op": "replace", "path": "/metadata/labels/zone", "value": LONG}]
    for patch, content_type in (
        (long_label, MERGE),
        (long_label, STRATEGIC),
        (json_patch, JSON_PATCH),
    ):
        status, body = raw_patch(kube_api, "/api/v1/nodes/n1", patch, content_type)
        assert (status, body["message"]) == (422, expected), content_type

    stored = core.read_node("n1").metadata
    assert stored.labels == {"zone": "a"}
    assert stored.resource_version == created.metadata.resource_version


def raw_patch(
    kube_api: client.ApiClient, path: str, body: Any, content_type: str
) -> tuple[int, Any]:
    resp = kube_api.rest_client.pool_manager.request(
        "PATCH",
        kube_api.configuration.host + path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": content_type},
    )
    return resp.status, json.loads(resp.data)


def test_a_custom_resource_with_a_long_label_value_is_422_with_its_group_kind(
    kube_api: client.ApiClient,
) -> None:
    crs = client.CustomObjectsApi(kube_api)
    body = {
        "apiVersion": "nodefence.io/v1alpha1",
        "kind": "FenceOperation",
        "metadata": {"name": "op", "labels": {"nodefence.io/node": LONG}},
        "spec": {"nodeName": LONG, "operationId": "1", "action": "off"},
    }
    status = refused(
        lambda: crs.create_namespaced_custom_object(
            "nodefence.io", "v1alpha1", "nodefence", "fenceoperations", body
        )
    )
    assert status["message"].startswith('FenceOperation.nodefence.io "op" is invalid: ')
    assert status["details"] == {
        "name": "op",
        "group": "nodefence.io",
        "kind": "FenceOperation",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": f'Invalid value: "{LONG}": must be no more than 63 characters',
                "field": "metadata.labels",
            }
        ],
    }


def test_a_label_selector_naming_a_long_value_is_a_bad_request(kube_api: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    status = refused(lambda: core.list_node(label_selector=f"zone={LONG}"))
    assert status["reason"] == "BadRequest"
    assert status["message"] == (
        f'unable to parse requirement: values[0][zone]: Invalid value: "{LONG}": must be no'
        " more than 63 characters"
    )
    assert core.list_node(label_selector="zone=a").items == []
