"""The shipped configs (signatures required; the watchdog overlay's self-fencing on; the upgrade
overlay's old key) and the example inventory load with the agent's own parsers, and each role's
keys load as it reads them."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from nodefence.agent.config.agent_file import parse_config
from nodefence.agent.config.inventory_file import load_inventory
from nodefence.agent.config.key_files import fencer_keyring, node_signer
from tests.support.deploy import (
    FENCER,
    NAMESPACE,
    REPO,
    TARGETS,
    agent_config_text,
    container,
    find,
    mqtt_tool,
    pod_spec,
    render,
    secret_volumes,
)


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


def test_the_example_broker_password_file_matches_the_example_passwords() -> None:
    docs, tool = render("overlays/example"), mqtt_tool()
    logins = dict(find(docs, "Secret", "nodefence-mqtt-agents")["stringData"])
    logins[FENCER] = find(docs, "Secret", "nodefence-mqtt-fencer")["stringData"]["password"]
    lines = find(docs, "Secret", "nodefence-mqtt-broker")["stringData"]["passwd"].splitlines()
    hashes = dict(line.split(":", 1) for line in lines)
    assert set(hashes) == set(logins)
    for user, password in logins.items():
        assert "fake" in password and tool.verify(password, hashes[user]), user
