"""The agent's own config file (YAML): cluster name, broker, detection, Kubernetes, health.

Validated at start; a `ConfigError` names the file and the field. Secrets (the broker
password) come only from a file or an environment variable and are held as `Secret`.

    cluster: prod-a                 # MQTT topic namespace; one per Kubernetes cluster
    broker:
      host: mqtt.nodefence.svc
      port: 1883
      username: node-1              # or username_env: NODE_NAME
      password_file: /etc/nodefence/mqtt/password   # or password_env
      tls: {ca_file: ..., cert_file: ..., key_file: ...}   # optional
      keepalive: 10
      reconnect_min: 0.2            # jittered exponential backoff between reconnects
      reconnect_max: 5
    detection:
      profile: default              # fast | default | conservative
      overrides: {fence_after: 5}   # any DetectionProfile field
      max_unhealthy: "40%"          # storm guard: a count or a percentage of nodes
    kubernetes:
      kubeconfig: null              # null: in-cluster service account
      namespace: nodefence          # where the leader Lease and Events live
      lease_name: nodefence-leader
      lease_duration: 15
      renew_deadline: 10
      retry_period: 2
    health:
      host: 0.0.0.0                 # the agent's health endpoint, probed by peers
      port: 9440
    inventory: /etc/nodefence/inventory/inventory.yaml   # without it: detect and report only
    fencing:
      max_parallel: 2               # fencing operations at once
      after_proof: off              # off (leave it off) | reboot (power on after cleanup)
      retry_base: 5                 # FenceFailed retries: 5 s, 10 s, ... up to retry_max
      retry_max: 60
      recovery_timeout: 300         # how long to wait for ColdStandby VMs to run elsewhere
    metrics:
      host: 0.0.0.0                 # Prometheus /metrics
      port: 9441                    # 0 picks a free port (simulations)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from backends.spec import Secret


class ConfigError(ValueError):
    """A problem in the agent config; the message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str, problem: str) -> None:
        self.path = str(path)
        self.field = field_name
        super().__init__(
            f"{path}: field {field_name!r}: {problem}" if field_name else f"{path}: {problem}"
        )


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 10
    reconnect_min: float = 0.2
    reconnect_max: float = 5.0


@dataclass(frozen=True)
class KubeConfig:
    """Where the Kubernetes API is and how leadership is elected."""

    kubeconfig: str | None = None
    namespace: str = "nodefence"
    lease_name: str = "nodefence-leader"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class FencingConfig:
    """How the leader runs fencing operations."""

    max_parallel: int = 2
    after_proof: Literal["off", "reboot"] = "off"
    retry_base: float = 5.0
    retry_max: float = 60.0
    recovery_timeout: float = 300.0


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent config."""

    path: str
    cluster: str = "default"
    broker: BrokerConfig = BrokerConfig()
    profile: str = "default"
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    max_unhealthy: str = "40%"
    kube: KubeConfig = KubeConfig()
    health_host: str = "0.0.0.0"
    health_port: int = 9440
    inventory: str | None = None
    fencing: FencingConfig = FencingConfig()
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9441


_TOP = {"cluster", "broker", "detection", "kubernetes", "health", "inventory", "fencing", "metrics"}
_FENCING = {"max_parallel", "after_proof", "retry_base", "retry_max", "recovery_timeout"}
_BROKER = {
    "host",
    "port",
    "username",
    "username_env",
    "password_file",
    "password_env",
    "tls",
    "keepalive",
    "reconnect_min",
    "reconnect_max",
}
_TLS = {"ca_file", "cert_file", "key_file"}
_DETECTION = {"profile", "overrides", "max_unhealthy"}
_KUBE = {
    "kubeconfig",
    "namespace",
    "lease_name",
    "lease_duration",
    "renew_deadline",
    "retry_period",
}
_HEALTH = {"host", "port"}


def load_config(path: Path | str, env: dict[str, str] | None = None) -> AgentConfig:
    """Read and validate the agent config; raise `ConfigError` on any flaw."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(path, "", f"cannot read the file: {err.strerror or err}") from None
    except yaml.YAMLError:
        raise ConfigError(path, "", "not valid YAML") from None
    return parse_config(doc, path=path, env=env)


def parse_config(doc: Any, *, path: Path, env: dict[str, str]) -> AgentConfig:
    """Validate an already-parsed config document (see `load_config`)."""
    r = _Reader(path, env)
    top = r.mapping(doc, "", _TOP)
    cluster = r.string(top, "cluster", "default")
    if any(c in cluster for c in "/+#") or not cluster.replace("-", "").replace(".", "").isalnum():
        raise ConfigError(path, "cluster", "use letters, digits, '-' and '.' only")
    b = r.mapping(top.get("broker") or {}, "broker", _BROKER)
    tls = r.mapping(b.get("tls") or {}, "broker.tls", _TLS)
    username = r.opt_string(b, "username", "broker.username")
    if username is None and b.get("username_env") is not None:
        var = r.string(b, "username_env", None, "broker.username_env")
        username = env.get(var) or None
        if username is None:
            raise ConfigError(path, "broker.username_env", f"environment variable {var} is not set")
    broker = BrokerConfig(
        host=r.string(b, "host", "127.0.0.1", "broker.host"),
        port=r.integer(b, "port", 1883, 1, 65535, "broker.port"),
        username=username,
        password=r.secret(b, "broker"),
        ca_file=r.existing_file(tls, "ca_file", "broker.tls.ca_file"),
        cert_file=r.existing_file(tls, "cert_file", "broker.tls.cert_file"),
        key_file=r.existing_file(tls, "key_file", "broker.tls.key_file"),
        keepalive=r.integer(b, "keepalive", 10, 1, 3600, "broker.keepalive"),
        reconnect_min=r.number(b, "reconnect_min", 0.2, 0.01, "broker.reconnect_min"),
        reconnect_max=r.number(b, "reconnect_max", 5.0, 0.01, "broker.reconnect_max"),
    )
    d = r.mapping(top.get("detection") or {}, "detection", _DETECTION)
    overrides = d.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(path, "detection.overrides", "must be a mapping of profile fields")
    max_unhealthy = str(d.get("max_unhealthy", "40%"))
    _check_max_unhealthy(path, max_unhealthy)
    k = r.mapping(top.get("kubernetes") or {}, "kubernetes", _KUBE)
    kube = KubeConfig(
        kubeconfig=r.opt_string(k, "kubeconfig", "kubernetes.kubeconfig"),
        namespace=r.string(k, "namespace", "nodefence", "kubernetes.namespace"),
        lease_name=r.string(k, "lease_name", "nodefence-leader", "kubernetes.lease_name"),
        lease_duration=r.number(k, "lease_duration", 15.0, 0.1, "kubernetes.lease_duration"),
        renew_deadline=r.number(k, "renew_deadline", 10.0, 0.1, "kubernetes.renew_deadline"),
        retry_period=r.number(k, "retry_period", 2.0, 0.01, "kubernetes.retry_period"),
    )
    if not kube.retry_period < kube.renew_deadline < kube.lease_duration:
        raise ConfigError(
            path,
            "kubernetes.renew_deadline",
            "must hold: retry_period < renew_deadline < lease_duration",
        )
    h = r.mapping(top.get("health") or {}, "health", _HEALTH)
    f = r.mapping(top.get("fencing") or {}, "fencing", _FENCING)
    after = r.string(f, "after_proof", "off", "fencing.after_proof")
    if after not in ("off", "reboot"):
        raise ConfigError(path, "fencing.after_proof", f"must be off or reboot, got {after!r}")
    fencing = FencingConfig(
        max_parallel=r.integer(f, "max_parallel", 2, 1, 100, "fencing.max_parallel"),
        after_proof=after,  # type: ignore[arg-type]
        retry_base=r.number(f, "retry_base", 5.0, 0.01, "fencing.retry_base"),
        retry_max=r.number(f, "retry_max", 60.0, 0.01, "fencing.retry_max"),
        recovery_timeout=r.number(f, "recovery_timeout", 300.0, 0.1, "fencing.recovery_timeout"),
    )
    m = r.mapping(top.get("metrics") or {}, "metrics", _HEALTH)
    inventory = r.opt_string(top, "inventory", "inventory")
    if inventory is not None:
        inventory = str(_relative(path, inventory))
    return AgentConfig(
        path=str(path),
        cluster=cluster,
        broker=broker,
        profile=r.string(d, "profile", "default", "detection.profile"),
        profile_overrides=dict(overrides),
        max_unhealthy=max_unhealthy,
        kube=kube,
        health_host=r.string(h, "host", "0.0.0.0", "health.host"),
        health_port=r.integer(h, "port", 9440, 0, 65535, "health.port"),
        inventory=inventory,
        fencing=fencing,
        metrics_host=r.string(m, "host", "0.0.0.0", "metrics.host"),
        metrics_port=r.integer(m, "port", 9441, 0, 65535, "metrics.port"),
    )


def _check_max_unhealthy(path: Path, value: str) -> None:
    text = value[:-1] if value.endswith("%") else value
    ok = text.isdigit() and (not value.endswith("%") or 0 < int(text) <= 100)
    if not ok:
        raise ConfigError(
            path,
            "detection.max_unhealthy",
            f"must be a count (e.g. 3) or a percentage (e.g. 40%), got {value!r}",
        )


def _relative(path: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else path.parent / p


class _Reader:
    """Typed field access that raises `ConfigError` naming the field."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def mapping(self, doc: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise ConfigError(self.path, where, "must be a mapping")
        for key in doc:
            if key not in allowed:
                name = f"{where}.{key}" if where else str(key)
                raise ConfigError(
                    self.path, name, f"unknown field (allowed: {', '.join(sorted(allowed))})"
                )
        return doc

    def string(
        self, doc: dict[str, Any], key: str, default: str | None, name: str | None = None
    ) -> str:
        value = doc.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.path, name or key, "must be a non-empty string")
        return value.strip()

    def opt_string(self, doc: dict[str, Any], key: str, name: str) -> str | None:
        return None if doc.get(key) is None else self.string(doc, key, None, name)

    def integer(
        self, doc: dict[str, Any], key: str, default: int, lo: int, hi: int, name: str
    ) -> int:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(self.path, name, f"must be an integer {lo}-{hi}, got {value!r}")
        return value

    def number(self, doc: dict[str, Any], key: str, default: float, lo: float, name: str) -> float:
        value = doc.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < lo:
            raise ConfigError(self.path, name, f"must be a number >= {lo:g}, got {value!r}")
        return float(value)

    def existing_file(self, doc: dict[str, Any], key: str, name: str) -> str | None:
        value = self.opt_string(doc, key, name)
        if value is None:
            return None
        p = _relative(self.path, value)
        if not p.is_file():
            raise ConfigError(self.path, name, f"no such file {p}")
        return str(p)

    def secret(self, doc: dict[str, Any], where: str) -> Secret | None:
        if "password" in doc:
            raise ConfigError(
                self.path,
                f"{where}.password",
                "inline passwords are not accepted; use password_file or password_env",
            )
        pfile, penv = doc.get("password_file"), doc.get("password_env")
        if pfile is not None and penv is not None:
            raise ConfigError(
                self.path,
                f"{where}.password_file",
                "set only one of password_file and password_env",
            )
        if penv is not None:
            var = self.string(doc, "password_env", None, f"{where}.password_env")
            value = self.env.get(var)
            if not value:
                raise ConfigError(
                    self.path, f"{where}.password_env", f"environment variable {var} is not set"
                )
            return Secret(value)
        if pfile is not None:
            file = _relative(
                self.path, self.string(doc, "password_file", None, f"{where}.password_file")
            )
            try:
                value = file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as err:
                raise ConfigError(
                    self.path,
                    f"{where}.password_file",
                    f"cannot read {file}: {err.strerror or err}",
                ) from None
            return Secret(value)
        return None
