"""The agent config loader: defaults, validation errors naming file and field, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.profiles import ProfileError, profile_from_mapping

EXAMPLE = Path(__file__).parent.parent / "examples" / "agent.yaml"


def test_an_empty_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("{}\n")
    cfg = load_config(path, env={})
    assert cfg.cluster == "default" and cfg.profile == "default"
    assert (cfg.kube.lease_duration, cfg.kube.renew_deadline, cfg.kube.retry_period) == (
        15.0,
        10.0,
        2.0,
    )
    assert cfg.broker.password is None and cfg.max_unhealthy == "40%"


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/etc/nodefence/mqtt/password", str(tmp_path / "pw"))
    text = text.replace("/etc/nodefence/inventory/inventory.yaml", "inv.yaml")
    (tmp_path / "pw").write_text("mqtt-secret\n")
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    cfg = load_config(path, env={"NODE_NAME": "worker-1"})
    assert cfg.broker.username == "worker-1"
    assert cfg.broker.password is not None and cfg.broker.password.reveal() == "mqtt-secret"
    assert "mqtt-secret" not in repr(cfg)
    assert cfg.inventory == str(tmp_path / "inv.yaml")
    profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("broker: {port: 70000}", "broker.port"),
        ("broker: {password: x}", "broker.password"),
        ("broker: {password_env: NOPE}", "broker.password_env"),
        ("broker: {tls: {ca_file: missing.pem}}", "broker.tls.ca_file"),
        ("detection: {max_unhealthy: lots}", "detection.max_unhealthy"),
        ("kubernetes: {renew_deadline: 20}", "kubernetes.renew_deadline"),
        ("kubernetes: {namespaec: x}", "kubernetes.namespaec"),
        ("cluster: a/b", "cluster"),
        ("helth: {}", "helth"),
    ],
)
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == field
    assert str(path) in str(info.value)


def test_an_unknown_profile_field_is_named() -> None:
    with pytest.raises(ProfileError) as info:
        profile_from_mapping({"profile": "default", "fence_aftr": 3})
    assert "fence_aftr" in str(info.value)
