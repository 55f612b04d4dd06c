"""The manifests an operator applies (`deploy/`), checked without a cluster: every manifest of
the base and the overlays renders (`kubectl kustomize`) and validates against the Kubernetes
OpenAPI schemas, offline (kubernetes-validate's bundled schemas); the two roles: the node agent
DaemonSet mounts no inventory, no fencer key and no cluster key and has no API rights (the
watchdog component: two reads); the fencer Deployment mounts them."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy import (
    ACCOUNT,
    AGENT_CONFIG,
    FENCER,
    KUBE_VERSIONS,
    TARGETS,
    WORKLOADS,
    Obj,
    container,
    find,
    pod_spec,
    render,
    secret_volumes,
)


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
