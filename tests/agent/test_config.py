"""The agent config loader: defaults, validation errors naming file and field, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodefence.agent.config.agent_file import ConfigError, load_config
from nodefence.agent.detection.profiles import ProfileError, profile_from_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.yaml"


def test_an_empty_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("{}\n")
    cfg = load_config(path, env={})
    assert cfg.cluster == "default" and cfg.profile == "default"
    # Chosen for a fast takeover by a warm standby (operator guide: "Leader Lease timings").
    assert (cfg.kube.lease_duration, cfg.kube.renew_deadline, cfg.kube.retry_period) == (
        5.0,
        3.0,
        1.0,
    )
    assert (cfg.kube.standbys, cfg.kube.cold_retry_period) == (2, 10.0)
    assert cfg.broker.password is None and cfg.max_unhealthy == "40%"
    assert cfg.brokers == (cfg.broker,)
    assert cfg.virtualization == "auto"  # every VM API the cluster serves


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/etc/nodefence/mqtt/password", str(tmp_path / "pw"))
    text = text.replace("/etc/nodefence/inventory/inventory.yaml", "inv.yaml")
    (tmp_path / "pw").write_text("mqtt-secret\n")
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    cfg = load_config(path, env={"NODE_NAME": "worker-1", "MQTT_USERNAME": "worker-1"})
    assert cfg.broker.username == "worker-1"
    assert cfg.broker.password is not None and cfg.broker.password.reveal() == "mqtt-secret"
    assert "mqtt-secret" not in repr(cfg)
    assert len(cfg.brokers) == 2 and {b.username for b in cfg.brokers} == {"worker-1"}
    assert cfg.inventory == str(tmp_path / "inv.yaml")
    assert cfg.auth.mode == "required" and not cfg.watchdog.enabled
    # Both roles' keys are named; each role reads its own at start.
    assert cfg.auth.node_key_file == "/var/lib/nodefence/node.key"
    assert cfg.auth.fencer_key_file == "/etc/nodefence/fencer/key"
    assert len(cfg.auth.fencer_public_keys) == 1 and cfg.auth.key is None
    profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("broker: {port: 70000}", "broker.port"),
        ("broker: {password: x}", "broker.password"),
        ("broker: {password_env: NOPE}", "broker.password_env"),
        ("broker: {tls: {ca_file: missing.pem}}", "broker.tls.ca_file"),
        ("broker: {host: a, endpoints: [{host: b}]}", "broker.endpoints"),
        ("broker: {endpoints: []}", "broker.endpoints"),
        ("broker: {endpoints: a.example}", "broker.endpoints"),
        ("broker: {endpoints: [{host: a}, {host: a, port: 1883}]}", "broker.endpoints[1].host"),
        ("broker: {endpoints: [{host: a}, {port: 1884}]}", "broker.endpoints[1].host"),
        ("broker: {endpoints: [{host: a, keepalive: 3}]}", "broker.endpoints[0].keepalive"),
        ("broker: {endpoints: [{host: a, port: 0}]}", "broker.endpoints[0].port"),
        ("broker: {endpoints: [{host: a, password: x}]}", "broker.endpoints[0].password"),
        ("kubernetes: {standbys: -1}", "kubernetes.standbys"),
        ("detection: {max_unhealthy: lots}", "detection.max_unhealthy"),
        ("kubernetes: {renew_deadline: 20}", "kubernetes.renew_deadline"),
        ("kubernetes: {namespaec: x}", "kubernetes.namespaec"),
        ("cluster: a/b", "cluster"),
        ("helth: {}", "helth"),
        ("fencing: {bmc_check_interval: 0.5}", "fencing.bmc_check_interval"),
        ("fencing: {bmc_check_interval: -1}", "fencing.bmc_check_interval"),
        ("fencing: {bmc_check_parallel: 0}", "fencing.bmc_check_parallel"),
        ("virtualization: kvm", "virtualization"),
        ("virtualization: [kubevirt]", "virtualization"),
    ],
)
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == field
    assert str(path) in str(info.value)


def test_a_single_broker_config_still_means_one_broker(tmp_path: Path) -> None:
    path = write(tmp_path, "broker: {host: mqtt.example, port: 1884}\n")
    cfg = load_config(path, env={})
    assert [b.address for b in cfg.brokers] == ["mqtt.example:1884"]
    assert cfg.broker is cfg.brokers[0]


def test_broker_endpoints_list_every_broker_with_the_shared_settings(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("shared-secret\n")
    (tmp_path / "pw-b").write_text("secret-of-b\n")
    path = write(
        tmp_path,
        "broker:\n"
        "  endpoints:\n"
        "    - host: mqtt-0.example\n"
        "    - {host: mqtt-1.example, port: 1884, password_file: pw-b}\n"
        "  username_env: NODE_NAME\n"
        "  password_file: pw\n"
        "  keepalive: 7\n",
    )
    cfg = load_config(path, env={"NODE_NAME": "worker-1"})
    assert [b.address for b in cfg.brokers] == ["mqtt-0.example:1883", "mqtt-1.example:1884"]
    assert cfg.broker == cfg.brokers[0]
    assert {b.username for b in cfg.brokers} == {"worker-1"}
    assert {b.keepalive for b in cfg.brokers} == {7}
    secrets = [b.password.reveal() for b in cfg.brokers if b.password is not None]
    assert secrets == ["shared-secret", "secret-of-b"]  # one broker may have its own password
    assert "secret" not in repr(cfg)


def test_an_unknown_profile_field_is_named() -> None:
    with pytest.raises(ProfileError) as info:
        profile_from_mapping({"profile": "default", "fence_aftr": 3})
    assert "fence_aftr" in str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_a_heartbeat_key_makes_signatures_required_by_default(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k" * 40 + "\n")
    cfg = load_config(write(tmp_path, "auth: {heartbeat_key_file: key}\n"))
    assert cfg.auth.mode == "required" and cfg.auth.key is not None
    assert cfg.auth.key.reveal() == "k" * 40 and "k" * 40 not in repr(cfg)
    env = {"HB_KEY": "e" * 32}
    cfg = load_config(write(tmp_path, "auth: {heartbeat_key_env: HB_KEY, mode: permissive}\n"), env)
    assert cfg.auth.mode == "permissive" and cfg.auth.key is not None
    assert load_config(write(tmp_path, "{}\n")).auth.mode == "off"


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("auth: {mode: required}\n", "auth.mode", "needs keys"),
        ("auth: {node_key_file: k}\n", "auth.fencer_public_keys", "go together"),
        ("auth: {fencer_public_keys: [" + "A" * 43 + "=]}\n", "auth.node_key_file", "together"),
        (
            "auth: {node_key_file: k, fencer_public_keys: [abcd]}\n",
            "auth.fencer_public_keys[0]",
            "3 bytes",
        ),
        ("auth: {node_key_file: k, fencer_public_keys: x}\n", "auth.fencer_public_keys", "list"),
        (
            "auth: {fencer_key_file: k, fencer_also_accept_files: [1]}\n",
            "auth.fencer_also_accept_files[0]",
            "path",
        ),
        ("auth: {mode: strict, heartbeat_key_env: K}\n", "auth.mode", "off, permissive"),
        ("auth: {heartbeat_key: abc}\n", "auth.heartbeat_key", "unknown field"),
        ("auth: {heartbeat_key_env: NOPE}\n", "auth.heartbeat_key_env", "not set"),
        ("auth: {heartbeat_key_env: K, max_skew: 0}\n", "auth.max_skew", "0.5"),
        ("watchdog: {enabled: yes please}\n", "watchdog.enabled", "true or false"),
        ("watchdog: {timeout: 1, feed_interval: 0.6}\n", "watchdog.feed_interval", "half"),
        (
            "watchdog: {cut_off_after: 4, api_check_interval: 3}\n",
            "watchdog.cut_off_after",
            "twice",
        ),
        ("fencing: {self_fence: 1}\n", "fencing.self_fence", "true or false"),
        ("watchdog: {timeout: 1" + "0" * 400 + "}\n", "watchdog.timeout", "1329 bits"),
    ],
)
def test_bad_auth_and_watchdog_settings_are_named(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {"K": "x" * 40})
    assert info.value.field == field and problem in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_rotation_keys_are_read_from_files_and_checked(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k" * 40)
    (tmp_path / "next").write_text("n" * 40 + "\n")
    (tmp_path / "short").write_text("s" * 8)
    text = "auth: {heartbeat_key_file: key, also_accept_files: [%s]}\n"
    cfg = load_config(write(tmp_path, text % "next"))
    assert [k.reveal() for k in cfg.auth.also_accept] == ["n" * 40]
    for bad, problem in (("short", "32 bytes"), ("missing", "cannot read")):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text % bad))
        assert info.value.field == "auth.also_accept_files[0]" and problem in str(info.value)
        assert "s" * 8 not in str(info.value)


def test_the_release_and_cleanup_settings_default_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("{}\n")
    f = load_config(path, env={}).fencing
    assert (f.cleanup, f.release, f.release_timeout, f.return_timeout) == (
        "delete",
        True,
        60.0,
        900.0,
    )
    path.write_text("fencing: {cleanup: taint, release: false, return_timeout: 120}\n")
    f = load_config(path, env={}).fencing
    assert (f.cleanup, f.release, f.return_timeout) == ("taint", False, 120.0)
    for bad, field in (
        ("{cleanup: drain}", "fencing.cleanup"),
        ("{release: 'yes'}", "fencing.release"),
        ("{release_timeout: 0}", "fencing.release_timeout"),
    ):
        path.write_text(f"fencing: {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path, env={})
        assert err.value.field == field and str(path) in str(err.value)
