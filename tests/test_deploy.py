"""The deployment an operator applies (`deploy/`, `Containerfile`), checked without a cluster.

- every manifest of the base and the overlays renders (`kubectl kustomize`) and validates
  against the Kubernetes OpenAPI schemas, offline (kubernetes-validate's bundled schemas);
- the CRD is a structural CRD, and the FenceOperation records the agent writes validate
  against its schema, with no field the API server would silently prune;
- the rendered objects apply to the hwsim Kubernetes API emulator with kubectl;
- two roles: the node agent DaemonSet mounts no inventory, no fencer key and no cluster key and
  has no API rights (the watchdog component: two reads); the fencer Deployment mounts them;
- RBAC: every API call of an end-to-end fencing run (the fencers) and of a maintenance run (the
  CLI) is granted to the fencers' ServiceAccount, every grant is used, none is broad (what a
  compromised node can do with its account: tests/test_compromised_node.py);
- the broker's shipped config and ACL, on a real mosquitto, let a node speak only for itself
  and only the fencers ask for probes, and a whole fencing run works through them;
- the shipped configs (signatures required; the watchdog overlay's self-fencing on; the upgrade
  overlay's old key) and the example inventory load with the agent's own parsers, and each
  role's keys load as it reads them;
- the Containerfile is multi-stage, slim and non-root; the alert rules name real metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from agent import metrics
from agent.auth_keys import fencer_keyring, node_signer
from agent.cluster import RECORD_GROUP, RECORD_PLURAL, RECORD_VERSION
from agent.config import parse_config
from agent.fencing_events import VmOutcome
from agent.fencing_operation import Operation, Phase
from agent.inventory import load_inventory
from agent.node_keys import private_key, public_of
from agent.policy import AlertKind
from agent.records import to_record
from hwsim.broker import MosquittoBroker, find_mosquitto, free_port
from hwsim.kube import KubeApiServer, RequestRecord, ResourceType
from hwsim.kube.controllers import ControllerTimers
from hwsim.simcluster import SimCluster
from hwsim.simcluster_settings import ClusterSettings
from hwsim.vm_views import vm_views
from hwsim.vms import RESTARTED_POLICIES

REPO = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_renders_and_validates_against_the_kubernetes_schemas(
    target: str, version: str
) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        where = f"{target}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version})"
        try:
            # strict: unknown fields are errors, so a typo cannot silently drop a setting
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where}: {str(err).splitlines()[0]}")


def test_the_base_ships_no_secret_so_apply_never_resets_real_credentials() -> None:
    assert [d for d in render("base") if d["kind"] == "Secret"] == []
    example = {d["metadata"]["name"] for d in render("overlays/example") if d["kind"] == "Secret"}
    assert example == {
        "nodefence-inventory",
        "nodefence-mqtt-agents",
        "nodefence-mqtt-fencer",
        "nodefence-mqtt-broker",
        "nodefence-fencer-key",
    }


def test_every_secret_configmap_and_account_the_pods_use_is_rendered() -> None:
    docs = render("overlays/example")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind in WORKLOADS:
        spec = pod_spec(docs, kind)
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names, volume
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, volume
        if spec.get("serviceAccountName"):
            assert ("ServiceAccount", spec["serviceAccountName"]) in names
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [
            kind
            for kind in WORKLOADS
            if service["spec"]["selector"].items()
            <= find(docs, kind)["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        ports = {p["name"] for p in container(docs, selected[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_the_brokers_are_independent_replicas_never_two_on_one_node() -> None:
    docs = render("overlays/example")
    brokers = find(docs, "StatefulSet", "nodefence-mqtt")
    assert brokers["spec"]["replicas"] >= 2
    spec = pod_spec(docs, "StatefulSet")
    (required,) = spec["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    labels = brokers["spec"]["template"]["metadata"]["labels"]
    assert required["labelSelector"]["matchLabels"].items() <= labels.items()
    assert find(docs, "Service", "nodefence-mqtt")["spec"]["clusterIP"] == "None"
    # Every broker enforces the same ACL and password file (the agents log in to each).
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["passwd"]["secret"]["secretName"] == "nodefence-mqtt-broker"
    assert volumes["config"]["configMap"]["name"].startswith("nodefence-mqtt-config")


def test_the_agent_runs_on_every_node_unprivileged_with_probes_on_its_health_port() -> None:
    docs = render("overlays/example")
    spec, agent = pod_spec(docs), container(docs)
    assert spec["tolerations"] == [{"operator": "Exists"}]  # tainted and NotReady nodes too
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["securityContext"]["runAsNonRoot"] is True
    hardening = agent["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "MQTT_USERNAME": "spec.nodeName",  # a node agent logs in to the brokers as its node
        "NODE_IP": "status.hostIP",
    }
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    config = yaml.safe_load(find(docs, "ConfigMap", AGENT_CONFIG)["data"]["agent.yaml"])
    assert config["broker"]["username_env"] == "MQTT_USERNAME"
    assert ports == {"health": config["health"]["port"], "metrics": config["metrics"]["port"]}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(agent["resources"]) == {"requests", "limits"}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/etc/nodefence/mqtt/password"]["subPathExpr"] == "$(NODE_NAME)"
    # The node's own key lives on the node (made at the first start, kept across pods), in the
    # directory the config's auth.node_key_file names, handed to the agent's user first.
    key_dir = str(Path(config["auth"]["node_key_file"]).parent)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[key_dir]["name"]]["hostPath"] == {
        "path": key_dir,
        "type": "DirectoryOrCreate",
    }
    (init,) = spec["initContainers"]
    assert init["image"] == agent["image"] and key_dir in init["command"][-1]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert agent["args"] == ["agent", "--config", "/etc/nodefence/config/agent.yaml"]


def secret_volumes(spec: Obj) -> dict[str, str]:
    """Mount path -> the Secret mounted there, for the pod's one container."""
    (only,) = spec["containers"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        m["mountPath"]: secrets[m["name"]] for m in only["volumeMounts"] if m["name"] in secrets
    }


@pytest.mark.parametrize("target", ["overlays/example", "overlays/watchdog"])
def test_only_the_fencers_mount_the_inventory_and_the_fencer_key(target: str) -> None:
    docs = render(target)
    agent, fencer = pod_spec(docs, "DaemonSet"), pod_spec(docs, "Deployment")
    config = yaml.safe_load(find(docs, "ConfigMap", AGENT_CONFIG)["data"]["agent.yaml"])
    # The node agents: their own MQTT password, nothing that can switch a server off or sign
    # for another node: no inventory, no fencer key, no cluster key.
    assert set(secret_volumes(agent).values()) == {"nodefence-mqtt-agents"}
    assert agent["serviceAccountName"] == ACCOUNT
    assert agent["automountServiceAccountToken"] is (target == "overlays/watchdog")
    # The fencers: the inventory, the fencer key and their MQTT password, where the (one,
    # shared) config names them; their own account.
    mounted = secret_volumes(fencer)
    assert mounted == {
        str(Path(config["inventory"]).parent): "nodefence-inventory",
        str(Path(config["auth"]["fencer_key_file"]).parent): "nodefence-fencer-key",
        str(Path(config["broker"]["password_file"]).parent): "nodefence-mqtt-fencer",
    }
    assert Path(config["auth"]["fencer_key_file"]).name == "key"
    assert "heartbeat_key_file" not in config["auth"]  # no cluster key left anywhere
    assert fencer["serviceAccountName"] == FENCER and "hostNetwork" not in fencer
    (box,) = fencer["containers"]
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in box["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "MQTT_USERNAME": FENCER}
    assert box["args"] == ["fencer", "--config", "/etc/nodefence/config/agent.yaml"]
    assert box["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert fencer["securityContext"]["runAsNonRoot"] is True


def test_the_fencers_are_two_or_three_never_on_one_node_preferably_on_the_control_plane() -> None:
    docs = render("overlays/example")
    deployment = find(docs, "Deployment", "nodefence-fencer")
    assert 2 <= deployment["spec"]["replicas"] <= 3
    # Never a surge: with one fencer per node a surge pod could not be placed.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    spec = pod_spec(docs, "Deployment")
    (required,) = spec["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    assert required["labelSelector"]["matchLabels"].items() <= labels.items()
    (preferred,) = spec["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    (term,) = preferred["preference"]["matchExpressions"]
    assert term == {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
            "effect": "NoSchedule"} in spec["tolerations"]  # fmt: skip
    config = yaml.safe_load(find(docs, "ConfigMap", AGENT_CONFIG)["data"]["agent.yaml"])
    assert config["kubernetes"]["standbys"] == deployment["spec"]["replicas"] - 1


def test_only_the_watchdog_overlay_is_privileged_and_only_to_open_the_watchdog() -> None:
    plain, watchdog = render("overlays/example"), render("overlays/watchdog")

    def others(docs: list[Obj]) -> list[Obj]:  # all but the DaemonSet and the agent config
        config = find(docs, "ConfigMap", AGENT_CONFIG)
        name = config["metadata"]["name"]  # its hash differs; the fencers mount it too
        return [
            json.loads(json.dumps(d).replace(name, AGENT_CONFIG))
            for d in docs
            if d["kind"] != "DaemonSet" and d is not config
        ]

    # ... and the agents' two reads the watchdog needs (its rbac.yaml), nothing else.
    added = [d for d in others(watchdog) if d not in others(plain)]
    assert others(plain) == [d for d in others(watchdog) if d not in added]
    assert {d["metadata"]["name"] for d in added} == {"nodefence-agent-watchdog"}
    before, after = container(plain), container(watchdog)
    assert "privileged" not in before["securityContext"]
    assert after["securityContext"]["privileged"] is True
    plain_volumes = pod_spec(plain)["volumes"]  # the config's differs only by its hash
    (device,) = [
        v for v in pod_spec(watchdog)["volumes"] if v not in plain_volumes and v["name"] != "config"
    ]
    assert device["hostPath"] == {"path": "/dev/watchdog", "type": "CharDevice"}
    assert {"name": device["name"], "mountPath": "/dev/watchdog"} in after["volumeMounts"]
    strip = ("securityContext", "volumeMounts")
    assert {k: v for k, v in before.items() if k not in strip} == {
        k: v for k, v in after.items() if k not in strip
    }


# -- the agent's own parsers on the shipped config and example secrets ----------------------


def agent_config_text(target: str) -> str:
    text: str = find(render(target), "ConfigMap", AGENT_CONFIG)["data"]["agent.yaml"]
    return text


def test_the_shipped_agent_configs_load_with_the_agents_own_parser(tmp_path: Path) -> None:
    (tmp_path / "mqtt").mkdir()
    (tmp_path / "mqtt" / "password").write_text("from-the-secret\n")
    (tmp_path / "fencer").mkdir()
    (tmp_path / "heartbeat").mkdir()
    (tmp_path / "heartbeat" / "key").write_text("an-old-cluster-key-of-32-bytes-or-more\n")
    for target in TARGETS:
        docs = render(target)
        text = agent_config_text(target)
        assert "/etc/nodefence/mqtt/password" in text
        shipped_secrets = [d for d in docs if d["kind"] == "Secret"]
        if shipped_secrets:  # the overlays: the FAKE example fencer key, as the fencers mount it
            key = find(shipped_secrets, "Secret", "nodefence-fencer-key")["stringData"]["key"]
            assert base64.b64decode(key).startswith(b"FAKE-")
        else:  # the base ships no Secret: a key as deploy/tools/mqtt_credentials.py makes it,
            # and its public half where the base's placeholder stands
            key_file, public = mqtt_tool().make_fencer_key(tmp_path / "creds")
            key = key_file.read_text().strip()
            placeholder = yaml.safe_load(text)["auth"]["fencer_public_keys"][0]
            text = text.replace(placeholder, public)
        (tmp_path / "fencer" / "key").write_text(key + "\n")
        doc = yaml.safe_load(text.replace("/etc/nodefence/", f"{tmp_path}/"))
        doc["auth"]["node_key_file"] = str(tmp_path / target / "node.key")
        env = {"MQTT_USERNAME": "worker-1"}
        cfg = parse_config(doc, path=tmp_path / "agent.yaml", env=env)
        assert cfg.broker.username == "worker-1"
        assert cfg.broker.password is not None
        assert cfg.broker.password.reveal() == "from-the-secret"
        assert cfg.inventory == f"{tmp_path}/inventory/inventory.yaml"
        # Every shipped config refuses unsigned messages; each role's keys load as it reads them,
        # and the node's key agreed with the config's fencer public key is the fencers' key.
        assert cfg.auth.mode == "required", target
        signer = node_signer(cfg, "worker-1")
        keyring = fencer_keyring(cfg)
        assert signer is not None and keyring is not None
        keyring.pinned("worker-1", signer.public)
        assert keyring.keys("worker-1") == (signer.key,), target
        # Only the upgrade overlay names the old cluster key (and mounts it in both roles).
        upgrade = target == "overlays/upgrade"
        assert (cfg.auth.key is not None) is upgrade, target
        if upgrade:
            assert cfg.auth.key is not None and cfg.auth.key.reveal().startswith("an-old")
            for kind in ("DaemonSet", "Deployment"):
                assert secret_volumes(pod_spec(docs, kind)).get("/etc/nodefence/heartbeat") == (
                    "nodefence-heartbeat-key"
                )
        # Self-fencing is on where the watchdog is mounted, and only there.
        watchdog = target == "overlays/watchdog"
        assert cfg.watchdog.enabled is cfg.fencing.self_fence is watchdog, target
        if watchdog:
            assert cfg.watchdog.device == "/dev/watchdog"
            assert cfg.watchdog.cut_off_after > 2 * cfg.watchdog.api_check_interval
            device_mounts = [m["mountPath"] for m in container(docs)["volumeMounts"]]
            assert cfg.watchdog.device in device_mounts
        # The config names what the manifests grant and serve.
        role = find(docs, "Role", FENCER)
        assert cfg.kube.namespace == role["metadata"]["namespace"] == NAMESPACE
        (named,) = [r for r in role["rules"] if r.get("resourceNames")]
        assert named["resourceNames"] == [cfg.kube.lease_name]
        # One endpoint per broker replica, by its stable name behind the headless Service.
        broker = find(docs, "Service", "nodefence-mqtt")
        brokers = find(docs, "StatefulSet", "nodefence-mqtt")
        ns = broker["metadata"]["namespace"]
        assert brokers["spec"]["serviceName"] == "nodefence-mqtt"
        assert [b.host for b in cfg.brokers] == [
            f"nodefence-mqtt-{i}.nodefence-mqtt.{ns}.svc"
            for i in range(brokers["spec"]["replicas"])
        ]
        assert {b.port for b in cfg.brokers} == {p["port"] for p in broker["spec"]["ports"]}
    names = [agent_config_text(t).split("cluster:", 1)[1].split()[0] for t in TARGETS]
    # the example overlay sets its own name; the kubevirt, watchdog and upgrade overlays are
    # that site
    assert names == ["cluster-1", "example-prod", "example-prod", "example-prod", "example-prod"]


def test_the_upgrade_overlay_is_the_example_site_plus_the_old_key_and_the_old_acl_grants() -> None:
    example = yaml.safe_load(agent_config_text("overlays/example"))
    upgrade = yaml.safe_load(agent_config_text("overlays/upgrade"))
    assert upgrade["auth"].pop("heartbeat_key_file") == "/etc/nodefence/heartbeat/key"
    assert upgrade == example
    # The fencers start before any old agent (a possible leader) is replaced: no roll by itself.
    strategy = find(render("overlays/upgrade"), "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "OnDelete"}
    assert find(render("overlays/example"), "DaemonSet")["spec"]["updateStrategy"]["type"] == (
        "RollingUpdate"
    )
    shipped = find(render("overlays/example"), "ConfigMap", "nodefence-mqtt-config")["data"]
    during = find(render("overlays/upgrade"), "ConfigMap", "nodefence-mqtt-config")["data"]
    assert during["mosquitto.conf"] == shipped["mosquitto.conf"]
    assert during["acl"].startswith(shipped["acl"])  # the new ACL, then the old grants
    added = [line for line in during["acl"][len(shipped["acl"]) :].splitlines() if line[:1] != "#"]
    assert added == [
        "pattern read nodefence/v1/+/heartbeat/+",
        "pattern read nodefence/v1/+/status/+",
        "pattern read nodefence/v1/+/probe-result/+",
        "pattern readwrite nodefence/v1/+/probe/+",
        "pattern readwrite nodefence/v1/+/leader/view",
    ]


def test_the_watchdog_overlays_config_is_the_example_sites_plus_self_fencing() -> None:
    example = yaml.safe_load(agent_config_text("overlays/example"))
    watchdog = yaml.safe_load(agent_config_text("overlays/watchdog"))
    assert watchdog.pop("watchdog")["enabled"] is True
    assert watchdog["fencing"].pop("self_fence") is True
    watchdog["fencing"].pop("self_fence_margin", None)
    assert watchdog == example  # nothing else drifts between the two copies


def test_the_example_inventory_secret_loads_with_the_agents_own_parser(tmp_path: Path) -> None:
    secret = find(render("overlays/example"), "Secret", "nodefence-inventory")
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value)
    inventory = load_inventory(tmp_path / "inventory.yaml", env={})
    assert sorted(inventory.nodes) == ["worker-1", "worker-2", "worker-3"]
    passwords = [d.password.reveal() for n in inventory.nodes.values() for d in n.devices()]
    assert passwords and all(p.startswith("FAKE-") for p in passwords)


def test_the_guides_inventory_example_loads_with_the_agents_own_parser(tmp_path: Path) -> None:
    guide = (REPO / "docs" / "operator-guide.md").read_text()
    section = guide.split("## BMC inventory reference", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "inventory.yaml").write_text(example)
    for name in ("worker-1-ipmi", "worker-1-redfish", "worker-3-bmc", "pdu", "bmc-ca.pem"):
        (tmp_path / name).write_text("x")
    inventory = load_inventory(tmp_path / "inventory.yaml", env={})
    assert [len(level.devices) for level in inventory.node("worker-1").levels] == [1, 1]
    assert inventory.node("worker-3").channel_groups == (
        frozenset({"ipmi", "redfish"}),
        frozenset({"pdu"}),
    )


def mqtt_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mqtt_credentials", DEPLOY / "tools" / "mqtt_credentials.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_broker_password_file_matches_the_example_passwords() -> None:
    docs, tool = render("overlays/example"), mqtt_tool()
    logins = dict(find(docs, "Secret", "nodefence-mqtt-agents")["stringData"])
    logins[FENCER] = find(docs, "Secret", "nodefence-mqtt-fencer")["stringData"]["password"]
    lines = find(docs, "Secret", "nodefence-mqtt-broker")["stringData"]["passwd"].splitlines()
    hashes = dict(line.split(":", 1) for line in lines)
    assert set(hashes) == set(logins)
    for user, password in logins.items():
        assert "fake" in password and tool.verify(password, hashes[user]), user


# -- the CRD --------------------------------------------------------------------------------


def crd() -> Obj:
    return find(render("base"), "CustomResourceDefinition", "fenceoperations.nodefence.io")


def structural_problems(schema: Obj, where: str = "") -> Iterator[str]:
    """Why a CRD schema is not structural (every node typed, properties only on objects)."""
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        yield f"{where or '.'}: no type"
    if "properties" in schema and schema.get("type") != "object":
        yield f"{where}: properties on a non-object"
    for name, sub in (schema.get("properties") or {}).items():
        yield from structural_problems(sub, f"{where}.{name}")
    if "items" in schema:
        yield from structural_problems(schema["items"], f"{where}[]")


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


def a_full_operation() -> Operation:
    vms = (
        VmOutcome("prod", "db-1", "AlwaysOn", True, running_on="worker-2", recovered_after=12.5),
        VmOutcome("prod", "batch-1", "Manual", False),
    )
    return Operation(
        node="worker-1",
        id="a1b2c3",
        phase=Phase.RECOVERING,
        power_off_sent=True,
        off_proven=True,
        level=2,
        attempts=3,
        tainted=True,
        node_deleted=True,
        vms=vms,
        errors=("level 1 ipmi: BMC unreachable",),
        reason="recovering",
        capacity_warning="",
    )


def test_the_crd_is_structural_and_serves_what_the_agent_writes() -> None:
    spec = crd()["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["scope"]) == (
        RECORD_GROUP,
        RECORD_PLURAL,
        "Namespaced",
    )
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (RECORD_VERSION, True, True)
    assert list(structural_problems(version["schema"]["openAPIV3Schema"])) == []


def test_the_records_the_agent_writes_validate_against_the_crd_schema() -> None:
    validator = record_validator()
    full = to_record(a_full_operation(), NAMESPACE, "worker-3")
    fresh = to_record(Operation(node="worker-1", id="x"), NAMESPACE, "worker-3")
    for record in (full, fresh):
        assert list(validator.iter_errors(record)) == []
    broken = to_record(a_full_operation(), NAMESPACE, "worker-3")
    broken["status"]["phase"] = "Exploded"
    del broken["spec"]["nodeName"]
    broken["status"]["unknownField"] = 1
    problems = {e.validator for e in validator.iter_errors(broken)}
    assert problems == {"enum", "required", "additionalProperties"}


# -- applying to the API emulator -------------------------------------------------------------

RBAC_KINDS = (
    ("Role", "roles", True),
    ("RoleBinding", "rolebindings", True),
    ("ClusterRole", "clusterroles", False),
    ("ClusterRoleBinding", "clusterrolebindings", False),
)


def serve_rbac(server: KubeApiServer) -> None:
    """The emulator does not serve rbac.authorization.k8s.io; serve it as plain storage."""
    for kind, plural, namespaced in RBAC_KINDS:
        server.register(
            ResourceType(
                group="rbac.authorization.k8s.io",
                version="v1",
                kind=kind,
                plural=plural,
                namespaced=namespaced,
                built_in=True,
            )
        )


def kubectl_apply(kubeconfig: Path, manifests: str) -> str:
    result = subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_rendered_objects_apply_to_the_api_emulator_and_reapply_unchanged(
    tmp_path: Path,
) -> None:
    server = KubeApiServer()
    serve_rbac(server)
    with server:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        for target in TARGETS:
            kubectl_apply(tmp_path / "kubeconfig", rendered_text(target))
        last = TARGETS[-1]
        again = kubectl_apply(tmp_path / "kubeconfig", rendered_text(last))
        assert again and all(line.endswith(" unchanged") for line in again.splitlines()), again
        store = server.store
        for doc in render(last):
            meta = doc["metadata"]
            assert store.get(doc["kind"].lower(), meta["name"], meta.get("namespace"))
        assert store.list("fenceoperations", NAMESPACE)["items"] == []  # the CRD is served


# -- RBAC: a small evaluator of the rendered rules ---------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One RBAC rule as bound to the subject; `namespace` None means cluster-wide."""

    role: str
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]
    namespace: str | None

    def allows(self, req: RequestRecord) -> bool:
        """Whether this rule authorizes `req`, as the API server's RBAC authorizer decides."""
        resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
        if self.namespace is not None and req.namespace != self.namespace:
            return False  # a Role never grants cluster-scoped or other-namespace requests
        if self.names and (req.verb in ("create", "list", "watch", "deletecollection")):
            return False  # a name-restricted rule cannot know the name of these
        return (
            ("*" in self.api_groups or req.group in self.api_groups)
            and ("*" in self.resources or resource in self.resources)
            and ("*" in self.verbs or req.verb in self.verbs)
            and (not self.names or req.name in self.names)
        )


def grants_for(docs: Iterable[Obj], namespace: str, account: str) -> list[Grant]:
    """Every rule bound to ServiceAccount `namespace/account` by the rendered bindings."""
    docs = list(docs)
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    grants: list[Grant] = []
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
        if not any(s.items() >= subject.items() for s in binding.get("subjects") or []):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        key = (ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])
        assert key in roles, f"{binding['kind']} {binding['metadata']['name']}: no {key}"
        for rule in roles[key]:
            grants.append(
                Grant(
                    role=f"{ref['kind']}/{ref['name']}",
                    api_groups=frozenset(rule.get("apiGroups") or ()),
                    resources=frozenset(rule.get("resources") or ()),
                    verbs=frozenset(rule["verbs"]),
                    names=frozenset(rule.get("resourceNames") or ()),
                    namespace=scope,
                )
            )
    return grants


DISCOVERY = re.compile(r"^/(api|apis|version|openapi|healthz|livez|readyz)(/.*)?$")


def denied(grants: list[Grant], requests: Iterable[RequestRecord]) -> list[str]:
    """The requests no grant allows (discovery paths are open to every authenticated user)."""
    out = []
    for req in requests:
        if not req.resource:
            if not (req.verb == "get" and DISCOVERY.match(req.path)):
                out.append(f"{req.verb} {req.path}")
        elif not any(g.allows(req) for g in grants):
            out.append(f"{req.verb} {req.path}")
    return sorted(set(out))


def unused(grants: list[Grant], requests: list[RequestRecord]) -> list[str]:
    """Each (role, group, resource, verb) a grant gives that no request needed."""
    out = []
    for g in grants:
        for group in g.api_groups:
            for resource in g.resources:
                resource_name, _, sub = resource.partition("/")
                for verb in g.verbs:
                    wanted = [
                        r
                        for r in requests
                        if (r.group, r.resource, r.subresource, r.verb)
                        == (group, resource_name, sub, verb)
                    ]
                    if not any(g.allows(r) for r in wanted):
                        where = g.namespace or "cluster"
                        out.append(f"{g.role} ({where}): {verb} {group or 'core'}/{resource}")
    return sorted(out)


def rec(
    verb: str, resource: str, namespace: str = "", name: str = "", group: str = ""
) -> RequestRecord:
    """A request as the emulator records it; `resource` may name a subresource (pods/eviction)."""
    plural, _, sub = resource.partition("/")
    return RequestRecord(
        verb, f"/fake/{resource}", group, "", plural, namespace, name, sub, code=200
    )


EVALUATOR_CASES = [
    # (request, allowed) against the little policy below
    (rec("list", "nodes"), True),
    (rec("delete", "nodes", name="n1"), False),  # verb not granted
    (rec("create", "pods/eviction", "ns1", "p"), True),  # subresource granted explicitly
    (rec("create", "pods", "ns1"), False),  # ...which grants nothing on the pod itself
    (rec("get", "leases", "app", "leader", group="coordination.k8s.io"), True),
    (rec("get", "leases", "app", "other", group="coordination.k8s.io"), False),  # resourceNames
    (rec("update", "leases", "elsewhere", "leader", group="coordination.k8s.io"), False),
    (rec("create", "leases", "app", group="coordination.k8s.io"), False),  # names can't allow it
    (rec("list", "leases", group="coordination.k8s.io"), False),  # a Role is never cluster-wide
]
EVALUATOR_POLICY: list[Obj] = [
    {"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    ]},
    {"kind": "ClusterRoleBinding", "metadata": {"name": "c"},
     "roleRef": {"kind": "ClusterRole", "name": "c"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}]},
    {"kind": "Role", "metadata": {"name": "r", "namespace": "app"}, "rules": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["leader"], "verbs": ["get", "update", "create"]},
    ]},
    {"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "app"},
     "roleRef": {"kind": "Role", "name": "r"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}]},
    {"kind": "ClusterRoleBinding", "metadata": {"name": "other"},
     "roleRef": {"kind": "ClusterRole", "name": "c"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "elsewhere"}]},
]  # fmt: skip


@pytest.mark.parametrize(("request_", "allowed"), EVALUATOR_CASES)
def test_the_rbac_evaluator_decides_as_the_api_server_does(
    request_: RequestRecord, allowed: bool
) -> None:
    grants = grants_for(EVALUATOR_POLICY, "app", "sa")
    assert (denied(grants, [request_]) == []) is allowed


def test_rbac_grants_nothing_broad_and_no_secret() -> None:
    docs = render("overlays/example")
    assert grants_for(docs, NAMESPACE, ACCOUNT) == []  # the node agents: no right at all
    watchdog = grants_for(render("overlays/watchdog"), NAMESPACE, ACCOUNT)
    assert {(g.role, v, r) for g in watchdog for v in g.verbs for r in g.resources} == {
        ("Role/nodefence-agent-watchdog", "list", "fenceoperations"),
        ("Role/nodefence-agent-watchdog", "watch", "fenceoperations"),
        ("ClusterRole/nodefence-agent-watchdog", "list", "nodes"),  # its own, by field selector
        ("ClusterRole/nodefence-agent-watchdog", "watch", "nodes"),
    }
    grants = grants_for(docs, NAMESPACE, FENCER)
    assert {g.role for g in grants} == {
        "ClusterRole/nodefence-fencer",
        "ClusterRole/nodefence-maintenance",
        "Role/nodefence-fencer",
        "Role/nodefence-fencer-node-leases",
        "Role/nodefence-maintenance",
    }
    for g in grants + watchdog:
        assert "*" not in g.api_groups | g.resources | g.verbs, g
        assert not g.resources & {"secrets", "configmaps", "serviceaccounts/token"}, g
        assert not g.verbs & {"escalate", "bind", "impersonate", "deletecollection"}, g
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert all(r.get("rules") and "aggregationRule" not in r for r in roles)


# -- RBAC against the calls of real runs --------------------------------------------------------

RUN_TIMINGS: dict[str, Any] = {  # as tests/test_e2e_fencing.py: short, for a quick run
    "lease_duration": 4.0,
    "renew_deadline": 3.0,
    "retry_period": 0.5,
    "kubelet_lease_interval": 2.0,
    "boot_delay": 1.0,
    "power_timeout": 3.0,
    "fencing": {"recovery_timeout": 20, "retry_base": 1, "retry_max": 2},
}


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


def test_every_api_call_of_a_fencing_run_is_granted_and_every_grant_is_used(
    tmp_path: Path,
) -> None:
    docs = render("overlays/example")
    # A busy kube-controller-manager: the attach/detach controller looks only every 2 s, so the
    # release finds the VolumeAttachments still there and deletes them itself.
    slow = ControllerTimers(attach_detach_loop=2.0)
    cluster = ShippedBrokerCluster(
        tmp_path,
        ClusterSettings(nodes=4, bmcs=True, vms=8, timers=slow, **RUN_TIMINGS),
        shipped_acl(),
    )
    serve_rbac(cluster.kube)
    try:
        cluster.start(agents=False)
        kubectl_apply(cluster.kubeconfig, rendered_text("overlays/example"))
        for node in cluster.nodes:
            cluster.start_agent(node)
        for node in cluster.fencer_hosts:
            cluster.start_fencer(node)
        leader = cluster.wait_for("a leader", cluster.leader, 30)
        restartable = [  # a victim whose VMs must run again elsewhere: recovery calls too
            vm["status"]["nodeName"]
            for vm in cluster.kube.store.list("virtualmachines")["items"]
            if vm["spec"]["runPolicy"] in RESTARTED_POLICIES
            and (vm.get("status") or {}).get("phase") == "Running"
        ]
        victim = next(n for n in restartable if n != leader)
        cluster.fleet[victim].cut_power()

        def recovered() -> list[Obj]:
            items = cluster.kube.store.list("fenceoperations", NAMESPACE)["items"]
            return [r for r in items if (r.get("status") or {}).get("phase") == "Recovered"]

        (record,) = cluster.wait_for("a Recovered FenceOperation", recovered, 60)
        cluster.wait_for(  # Events about VMs go to the VMs' own namespaces
            "VM Events",
            lambda: [
                e
                for e in cluster.kube.store.list("events")["items"]
                if e["involvedObject"].get("kind") == "VirtualMachine"
            ],
            10,
        )
    finally:
        cluster.stop()
    assert client_calls(cluster.kube, ACCOUNT) == []  # the node agents ask nothing
    calls = client_calls(cluster.kube, FENCER)
    assert calls and len(calls) == len(client_calls(cluster.kube))
    fencer_grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if "maintenance" not in g.role]
    assert denied(fencer_grants, calls) == []
    assert unused(fencer_grants, calls) == []
    assert {"delete", "patch"} <= {c.verb for c in calls if c.resource == "nodes"}
    # the release ran: pods force-deleted, VolumeAttachments looked at
    assert {"list", "delete"} <= {c.verb for c in calls if c.resource == "pods"}
    assert {"list", "delete"} <= {c.verb for c in calls if c.resource == "volumeattachments"}
    # nodefence's own writes never rely on an unconditional update (422 on a real server)
    assert [c for c in calls if c.code == 422] == []
    # What the agents stored is what the CRD keeps (nothing pruned on a real API server).
    assert list(record_validator().iter_errors(record)) == []


def test_on_a_cluster_serving_both_vm_apis_the_fenced_nodes_vms_of_both_are_verified(
    tmp_path: Path,
) -> None:
    """The kubevirt overlay's RBAC on a cluster running Deckhouse and KubeVirt VMs: the leader
    finds both APIs by discovery, verifies every restartable VM of either kind on the fenced
    node, and needs exactly what the overlay grants (the KubeVirt component included)."""
    docs = render("overlays/kubevirt")
    cluster = ShippedBrokerCluster(
        tmp_path,
        ClusterSettings(nodes=4, bmcs=True, vms=8, virt="both", **RUN_TIMINGS),
        shipped_acl(),
    )
    serve_rbac(cluster.kube)
    try:
        cluster.start(agents=False)
        kubectl_apply(cluster.kubeconfig, rendered_text("overlays/kubevirt"))
        for node in cluster.nodes:
            cluster.start_agent(node)
        for node in cluster.fencer_hosts:
            cluster.start_fencer(node)
        leader = cluster.wait_for("a leader", cluster.leader, 30)
        must_return = [v for v in vm_views(cluster.kube.store) if v.restarts and v.running]
        victim = next(  # hosts a restartable VM of each API
            n
            for n in cluster.nodes
            if n != leader
            and {"deckhouse", "kubevirt"} <= {v.api for v in must_return if v.node == n}
        )
        expected = {(v.api, v.name) for v in must_return if v.node == victim}
        cluster.fleet[victim].cut_power()

        def recovered() -> list[Obj]:
            items = cluster.kube.store.list("fenceoperations", NAMESPACE)["items"]
            return [r for r in items if (r.get("status") or {}).get("phase") == "Recovered"]

        (record,) = cluster.wait_for("a Recovered FenceOperation", recovered, 60)
        moved = {v.name: v for v in vm_views(cluster.kube.store)}
        split_brains = cluster.vm_violations()
    finally:
        cluster.stop()
    verified = {
        (vm["virtualization"], vm["name"])
        for vm in record["status"]["vms"]
        if vm["expectedRestart"] and vm["runningOn"] not in (None, victim)
    }
    assert verified == expected
    assert all(moved[name].running and moved[name].node != victim for _, name in expected)
    assert split_brains == []
    assert client_calls(cluster.kube, ACCOUNT) == []  # the node agents ask nothing
    calls = client_calls(cluster.kube, FENCER)
    fencer_grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if "maintenance" not in g.role]
    assert denied(fencer_grants, calls) == []
    assert unused(fencer_grants, calls) == []
    assert list(record_validator().iter_errors(record)) == []


def test_every_api_call_of_maintenance_is_granted_by_the_maintenance_role(
    tmp_path: Path,
) -> None:
    docs = render("overlays/example")
    cluster = SimCluster(
        tmp_path, ClusterSettings(nodes=3, vms=6, boot_delay=0.5, migration_delay=0.5)
    )
    try:
        cluster.start(agents=False)
        vms = cluster.kube.store.list("virtualmachines")["items"]
        running = [v for v in vms if (v.get("status") or {}).get("phase") == "Running"]
        node = running[0]["status"]["nodeName"]
        other = next(v for v in running if v["status"]["nodeName"] != node)
        cluster.kube.store.create(  # one ordinary pod for the drain to evict
            "pods",
            {
                "metadata": {
                    "name": "web-1",
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": "web",
                            "uid": "u1",
                            "controller": True,
                        }
                    ],
                },
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running"},
            },
            "default",
        )
        kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
        meta = other["metadata"]
        for args in (
            ["maintenance", "enter", node, "--timeout", "30"],
            ["maintenance", "list"],
            ["maintenance", "exit", node],
            ["migrate", meta["name"], "-n", meta["namespace"], "--wait", "--timeout", "30"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "agent.cli", *args, *kubeconfig],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    finally:
        cluster.stop()
    calls = client_calls(cluster.kube)
    assert calls
    maintenance = ("ClusterRole/nodefence-maintenance", "Role/nodefence-maintenance")
    grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if g.role in maintenance]
    assert denied(grants, calls) == []  # enough on its own, when bound to a person
    assert unused(grants, calls) == []
    assert [c for c in calls if c.code == 422] == []  # no unconditional update anywhere


# -- the broker's shipped config and ACL on a real mosquitto ---------------------------------


def start_shipped_broker(workdir: Path, passwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto with the rendered mosquitto.conf and ACL (paths and port made local)."""
    data = find(render("base"), "ConfigMap", "nodefence-mqtt-config")["data"]
    (workdir / "acl").write_text(data["acl"])
    port = free_port()
    conf = (
        data["mosquitto.conf"]
        .replace("/mosquitto/secret/passwd", str(passwd))
        .replace("/mosquitto/config/acl", str(workdir / "acl"))
        .replace("listener 1883", f"listener {port} 127.0.0.1")
    )
    # Started as root, mosquitto would switch to user `mosquitto`, who cannot read our files.
    conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
    (workdir / "mosquitto.conf").write_text(conf)
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(workdir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "mosquitto.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("mosquitto did not start")


async def test_through_the_shipped_broker_a_node_can_speak_only_for_itself(
    tmp_path: Path,
) -> None:
    tool = mqtt_tool()
    tool.make(tmp_path / "creds", ["node-1", "node-2"])
    password = {n: (tmp_path / "creds" / "agents" / n).read_text() for n in ("node-1", "node-2")}
    password[FENCER] = (tmp_path / "creds" / "fencer-password").read_text()
    proc, port = start_shipped_broker(tmp_path, tmp_path / "creds" / "passwd")
    base = "nodefence/v1/c1"
    forged = [
        f"{base}/heartbeat/node-2",
        f"{base}/status/node-2",
        f"{base}/probe-result/node-2",
        f"{base}/identity/node-2",
        f"{base}/probe/node-3",  # only the fencers make peers probe
        f"{base}/leader/view",  # ... and publish the view
        f"{base}/fencer/node-1",  # ... and say they are there
        "nodefence/v1/c1",  # nor anything outside its topics
    ]
    own = [
        f"{base}/heartbeat/node-1",
        f"{base}/status/node-1",
        f"{base}/probe-result/node-1",
        f"{base}/identity/node-1",
    ]
    fencer_own = [f"{base}/probe/node-3", f"{base}/leader/view", f"{base}/fencer/ctrl-1"]

    def client(user: str | None, secret: str | None, name: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", port, username=user, password=secret, identifier=name, timeout=5
        )

    async def drain(sub: aiomqtt.Client, count: int) -> list[str]:
        got: list[str] = []
        async with asyncio.timeout(5):
            async for message in sub.messages:
                got.append(str(message.topic))
                if len(got) == count:
                    break
        return got

    try:
        async with client(FENCER, password[FENCER], "fencer") as fencer:
            for kind in ("heartbeat", "status", "probe-result", "identity", "probe", "fencer"):
                await fencer.subscribe(f"{base}/{kind}/+", qos=1)
            await fencer.subscribe(f"{base}/leader/view", qos=1)
            async with client("node-2", password["node-2"], "node-2") as node2:
                # A node hears the fencers' requests and the view, and no other node.
                for kind in ("heartbeat", "status", "probe-result", "identity", "probe"):
                    await node2.subscribe(f"{base}/{kind}/+", qos=1)
                await node2.subscribe(f"{base}/leader/view", qos=1)
                async with client("node-1", password["node-1"], "node-1") as node1:
                    # The watchdog's broker contact: an agent hears its own heartbeat come back.
                    await node1.subscribe(f"{base}/heartbeat/node-1", qos=1)
                    for topic in forged + own:  # in order, at QoS 1: forged ones come first
                        await node1.publish(topic, b"x", qos=1)
                    async with asyncio.timeout(5):
                        echo = await anext(aiter(node1.messages))
                    assert str(echo.topic) == f"{base}/heartbeat/node-1"
                assert await drain(fencer, len(own)) == own  # no forged one came before
                for topic in fencer_own:
                    await fencer.publish(topic, b"y", qos=1)
                assert await drain(node2, 2) == fencer_own[:2]  # nothing of node-1's
            assert await drain(fencer, len(fencer_own)) == fencer_own
        for user, secret in (("node-1", "wrong"), (None, None), ("node-3", password["node-1"])):
            with pytest.raises(aiomqtt.MqttError):
                async with client(user, secret, "intruder"):
                    pass
        with pytest.raises(aiomqtt.MqttError):  # a node's password is not the fencers'
            async with client(FENCER, password["node-1"], "intruder"):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def test_the_credentials_tool_keeps_existing_passwords_and_hashes_like_mosquitto_passwd(
    tmp_path: Path,
) -> None:
    tool = mqtt_tool()
    tool.make(tmp_path, ["node-1"])
    first = (tmp_path / "agents" / "node-1").read_text()
    hashes = tool.make(tmp_path, ["node-1", "node-2"])  # adding a node rotates nobody
    assert (tmp_path / "agents" / "node-1").read_text() == first
    assert tool.verify(first, hashes["node-1"])
    assert oct((tmp_path / "passwd").stat().st_mode & 0o777) == "0o600"
    if shutil.which("mosquitto_passwd"):  # the reference implementation agrees
        ref = tmp_path / "ref"
        ref.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(ref), "u", "pw"], check=True)
        assert tool.verify("pw", ref.read_text().strip().split(":", 1)[1])


def test_the_credentials_tool_makes_a_fencer_key_both_roles_accept_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = mqtt_tool()
    out = tmp_path / "creds"
    assert tool.main(["-o", str(out), "node-1", "node-2"]) == 0
    key_file = out / "fencer-key"
    key = key_file.read_text().strip()
    assert len(base64.b64decode(key, validate=True)) == 32  # X25519, base64 as WireGuard's
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    printed = capsys.readouterr().out
    (public,) = re.findall(r"fencer_public_keys: \[(\S+)\]", printed)
    doc = {
        "auth": {
            "fencer_key_file": str(key_file),
            "node_key_file": str(tmp_path / "node.key"),
            "fencer_public_keys": [public],
        }
    }
    cfg = parse_config(doc, path=tmp_path / "agent.yaml", env={})
    assert cfg.auth.mode == "required"
    keyring, signer = fencer_keyring(cfg), node_signer(cfg, "node-1")
    assert keyring is not None and signer is not None
    assert keyring.fencer_publics == (base64.b64decode(public),)  # the printed half is its own
    assert tool.main(["-o", str(out), "node-3"]) == 0  # adding a node changes no key
    assert key_file.read_text().strip() == key
    printed += capsys.readouterr().out
    for secret in (key, (out / "fencer-password").read_text().strip()):
        assert secret not in printed
    # The commands it prints load every Secret the pods mount (but the inventory, yours to write).
    loaded = set(re.findall(r"create secret generic (\S+)", printed))
    docs = render("overlays/example")
    mounted = {
        v["secret"]["secretName"]
        for kind in WORKLOADS
        for v in pod_spec(docs, kind)["volumes"]
        if "secret" in v
    }
    assert loaded == mounted - {"nodefence-inventory"}
    assert tool.main(["-o", str(out), FENCER]) == 2  # the fencers' user is not a node name


def test_the_credentials_tool_computes_x25519_as_the_agent_does() -> None:
    tool = mqtt_tool()
    for seed in range(16):
        raw = hashlib.sha256(f"key {seed}".encode()).digest()
        assert tool.x25519_public(raw) == public_of(private_key(raw))


# -- the image ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]


def containerfile_stages() -> list[Stage]:
    """The Containerfile's stages: instruction keyword and argument, continuations joined."""
    text = (REPO / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else None, []))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def test_the_image_is_built_in_two_stages_and_runs_only_the_venv_as_non_root() -> None:
    stages = containerfile_stages()
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder" and final.base == builder.base == "python:3.11-slim"
    runs = " ".join(arg for kw, arg in builder.instructions if kw == "RUN")
    assert "pip wheel" in runs and "/opt/nodefence" in runs
    copies = [arg for kw, arg in final.instructions if kw == "COPY"]
    assert copies == ["--from=builder /opt/nodefence /opt/nodefence"]
    final_runs = " ".join(arg for kw, arg in final.instructions if kw == "RUN")
    # The one package install allowed: fence-agents, only when asked for, lists removed.
    optional = re.search(r'if \[ "\$WITH_FENCE_AGENTS" = 1 \]; then(.*?); *fi', final_runs)
    assert optional is not None, "the fence-agents option is missing"
    assert "install -y -qq --no-install-recommends fence-agents ipmitool" in optional[1]
    assert "rm -rf /var/lib/apt/lists/*" in optional[1]
    final_runs = final_runs.replace(optional[0], "")
    for tool in ("pip", "apt-get", "gcc", "build-essential", "make"):
        assert tool not in final_runs, f"the final image must not get {tool}"
    (user,) = [arg for kw, arg in final.instructions if kw == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0"
    for kind in ("DaemonSet", "Deployment"):
        pod = pod_spec(render("base"), kind)["securityContext"]
        assert int(uid) == pod["runAsUser"]  # runAsNonRoot needs a numeric user
    assert ("ENTRYPOINT", '["nodefence"]') in final.instructions


def dockerignore_keeps(path: str) -> bool:
    """Whether the build context keeps `path`, under .dockerignore's last-match-wins rules."""
    keep = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(/.*)?", path):
            keep = negate
    return keep


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    (builder, _) = containerfile_stages()
    sources = [
        src
        for kw, arg in builder.instructions
        if kw == "COPY"
        for src in arg.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for src in sources:
        assert (REPO / src).exists() and dockerignore_keeps(src), src
    for private in ("tests/conftest.py", ".git/config", "run/x", "deploy/base/agent.yaml"):
        assert not dockerignore_keeps(private), private
    assert not dockerignore_keeps("agent/__pycache__/cli.cpython-311.pyc")


# -- alerts --------------------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the agent's collectors expose."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {
                "counter": ("_total", "_created"),
                "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum", "_created"),
            }[family.type]
            names |= {family.name + s for s in suffixes}
    return names


def test_the_alert_rules_use_only_metrics_the_agent_exports() -> None:
    doc = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-rules.yaml").read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    assert len(rules) >= 8
    exported = exported_metric_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\bnodefence_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{rule['alert']}: {used - exported}"
    kinds = {k for r in rules for k in re.findall(r'kind=~?"([^"]+)"', r["expr"])}
    known = {a.value for a in AlertKind}
    assert {k for ks in kinds for k in ks.split("|")} <= known


def test_every_grafana_dashboard_query_names_only_metrics_the_agent_exports() -> None:
    doc = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exported = exported_metric_names()
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    used: set[str] = set()
    for panel in panels:
        assert panel["title"] and panel["description"], panel.get("title")
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bnodefence_[a-z_]+", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} names no nodefence metric"
            assert names <= exported, f"{panel['title']}: {names - exported}"
            used |= names
    # What an operator looks for: node health, operations and their phases, detection and
    # recovery latency, the BMC checks.
    for needed in (
        "nodefence_nodes",
        "nodefence_fence_operations_open",
        "nodefence_fence_operations_total",
        "nodefence_detection_seconds_bucket",
        "nodefence_recovery_seconds_bucket",
        "nodefence_bmc_check_ok",
        "nodefence_node_fenceable",
        "nodefence_bmc_certificate_expiry_days",
    ):
        assert needed in used, needed
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]


def test_a_pause_alerts_and_a_planned_power_off_in_maintenance_is_not_unfenceable() -> None:
    doc = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-rules.yaml").read_text())
    rules = {r["alert"]: r for group in doc["groups"] for r in group["rules"]}
    assert "nodefence_fencing_paused" in rules["NodefenceFencingPaused"]["expr"]
    assert "maintenance" not in rules["NodefenceNodeNotFenceable"]["expr"]
    down = rules["NodefenceNodeDownInMaintenance"]
    assert 'kind="maintenance"' in down["expr"] and down["labels"]["severity"] == "info"
