"""The deployment as an operator applies it (`deploy/`), for tests: the overlays rendered with
`kubectl kustomize`, the objects and pod specs in them, the shipped configs and the CRD's
schema, and a simulated cluster whose broker enforces the shipped ACL."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from nodefence.agent.kube.client import RECORD_GROUP, RECORD_VERSION
from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer, RequestRecord
from nodefence.hwsim.simcluster import ClusterSettings, SimCluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The oldest Kubernetes the manifests promise to work on, and the newest schemas bundled.
KUBE_VERSIONS = ("1.30.0", f"{kubernetes_validate.latest_version()}.0")
TARGETS = (
    "base",
    "overlays/example",
    "overlays/kubevirt",
    "overlays/watchdog",
    "overlays/upgrade",
)
NAMESPACE = "nodefence"
ACCOUNT = "nodefence-agent"  # the node agents' ServiceAccount
FENCER = "nodefence-fencer"  # the fencers' ServiceAccount (and their broker user)
WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet")
AGENT_CONFIG = "nodefence-agent-config"  # generated: the name carries a content hash
# User-Agent of the official kubernetes Python client: nodefence's calls, as opposed to the
# harness's kubectl and the simulators' in-process store calls (which never reach HTTP).
CLIENT_AGENT = "OpenAPI-Generator/"
Obj = dict[str, Any]


# -- rendering -------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is needed (with its built-in kustomize): scripts/install has it")
    return found


@cache
def rendered_text(target: str) -> str:
    """`kubectl kustomize deploy/<target>` (cached: kustomize output is deterministic)."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def render(target: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered_text(target)) if doc]


def find(docs: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    """The one object of `kind` named `name` (a generated ConfigMap: `name-<hash>`)."""
    of_kind = [d for d in docs if d["kind"] == kind]
    hits = [d for d in of_kind if name is None or d["metadata"]["name"] == name]
    if not hits and name is not None:
        hits = [
            d for d in of_kind if re.fullmatch(rf"{name}-[a-z0-9]{{10}}", d["metadata"]["name"])
        ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_spec(docs: Iterable[Obj], kind: str = "DaemonSet") -> Obj:
    spec: Obj = find(docs, kind)["spec"]["template"]["spec"]
    return spec


def container(docs: Iterable[Obj], kind: str = "DaemonSet") -> Obj:
    (only,) = pod_spec(docs, kind)["containers"]
    return dict(only)


def secret_volumes(spec: Obj) -> dict[str, str]:
    """Mount path -> the Secret mounted there, for the pod's one container."""
    (only,) = spec["containers"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        m["mountPath"]: secrets[m["name"]] for m in only["volumeMounts"] if m["name"] in secrets
    }


# -- the shipped configs and example secrets -------------------------------------------------


def agent_config_text(target: str) -> str:
    text: str = find(render(target), "ConfigMap", AGENT_CONFIG)["data"]["agent.yaml"]
    return text


def mqtt_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mqtt_credentials", DEPLOY / "tools" / "mqtt_credentials.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the CRD --------------------------------------------------------------------------------


def crd() -> Obj:
    return find(render("base"), "CustomResourceDefinition", "fenceoperations.nodefence.io")


def closed_json_schema(schema: Obj) -> Obj:
    """The CRD's OpenAPI v3 schema as JSON Schema, with unknown fields forbidden: the API server
    prunes them silently, so a record field missing from the CRD would be lost on a resume."""
    out = {k: v for k, v in schema.items() if k != "nullable" and not k.startswith("x-")}
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
    if "properties" in schema:
        out["properties"] = {k: closed_json_schema(v) for k, v in schema["properties"].items()}
        out["additionalProperties"] = False
    if "items" in schema:
        out["items"] = closed_json_schema(schema["items"])
    return out


def record_validator() -> jsonschema.Draft202012Validator:
    (version,) = crd()["spec"]["versions"]
    root = closed_json_schema(version["schema"]["openAPIV3Schema"])
    root["properties"] |= {
        "apiVersion": {"const": f"{RECORD_GROUP}/{RECORD_VERSION}"},
        "kind": {"const": "FenceOperation"},
        "metadata": {"type": "object"},
    }
    return jsonschema.Draft202012Validator(root)


class ShippedBrokerCluster(SimCluster):
    """A simulated cluster (secure, as by default: one broker password per node, agents log in
    as the DaemonSet makes them, username from $NODE_NAME) whose broker enforces the ACL
    rendered from the kustomize base."""

    def __init__(self, workdir: Path, settings: ClusterSettings, acl: str) -> None:
        super().__init__(workdir, settings)
        assert settings.secure and self.passwords
        self.brokers = [
            MosquittoBroker(workdir / f"mqtt-{i}", users=self.passwords, acl=acl)
            for i in range(len(self.brokers))
        ]


def shipped_acl() -> str:
    acl: str = find(render("base"), "ConfigMap", "nodefence-mqtt-config")["data"]["acl"]
    return acl


def client_calls(server: KubeApiServer, account: str | None = None) -> list[RequestRecord]:
    """The API calls nodefence made (the harness's kubectl and in-process calls excluded);
    with `account`, those made with its token (the simulated cluster's tokens name them)."""
    return [
        r
        for r in server.requests
        if r.user_agent.startswith(CLIENT_AGENT) and (account is None or r.user == account)
    ]
