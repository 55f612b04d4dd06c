"""The agent's own config file (YAML): cluster name, broker, detection, Kubernetes, health.

Validated at start; a `ConfigError` names the file and the field. Every option, with its
default, bounds and meaning, is declared once in `nodefence.agent.config.agent_options` (the guide's
"Agent config reference" table is rendered from it; `examples/agent.yaml` shows a whole file).
Secrets (the broker password) come only from a file or an environment variable and are held as
`Secret` (`nodefence.agent.config.secret_files`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from nodefence.agent.brief import brief
from nodefence.agent.config.agent_options import (
    AGENT_OPTIONS,
    MAX_BROKERS,
    Broker,
    Detection,
    Fencing,
    Health,
    Kube,
    Metrics,
    Top,
    Watchdog,
)
from nodefence.agent.config.auth import AuthConfig as AuthConfig
from nodefence.agent.config.auth import read_auth
from nodefence.agent.config.field_reader import FieldReader
from nodefence.agent.config.option_schema import fields_of, options_in
from nodefence.agent.config.secret_files import relative_to
from nodefence.backends.spec import Secret


class ConfigError(ValueError):
    """A problem in the agent config; the message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str, problem: str) -> None:
        self.path = str(path)
        self.field = field_name
        super().__init__(
            f"{path}: field {field_name!r}: {problem}" if field_name else f"{path}: {problem}"
        )


@dataclass(frozen=True)
class _Field:
    """A place in the agent config: `where` is the dotted field of the mapping read."""

    path: Path
    where: str = ""

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where and key else self.where or key

    def error(self, key: str, problem: str) -> Exception:
        return ConfigError(self.path, self._name(key), problem)

    def missing(self, key: str) -> Exception:
        return self.error(key, "must be a non-empty string")

    def unknown(self, keys: list[str], allowed: set[str]) -> Exception:
        return self.error(keys[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def at(self, where: str) -> _Field:
        return _Field(self.path, self._name(where))


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach one MQTT broker (one entry of `broker.endpoints`, or the only one)."""

    host: str = Broker.host.default
    port: int = Broker.port.default
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = Broker.keepalive.default
    reconnect_min: float = Broker.reconnect_min.default
    reconnect_max: float = Broker.reconnect_max.default

    @property
    def address(self) -> str:
        """`host:port`, the broker's name in logs and metrics."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class KubeConfig:
    """Where the Kubernetes API is and how leadership is elected."""

    kubeconfig: str | None = None
    namespace: str = Kube.namespace.default
    lease_name: str = Kube.lease_name.default
    lease_duration: float = Kube.lease_duration.default
    renew_deadline: float = Kube.renew_deadline.default
    retry_period: float = Kube.retry_period.default
    standbys: int = Kube.standbys.default
    cold_retry_period: float = Kube.cold_retry_period.default


@dataclass(frozen=True)
class FencingConfig:
    """How the leader runs fencing operations."""

    max_parallel: int = Fencing.max_parallel.default
    after_proof: Literal["off", "reboot"] = "off"
    cleanup: Literal["delete", "taint"] = "delete"
    release: bool = Fencing.release.default
    release_timeout: float = Fencing.release_timeout.default
    return_timeout: float = Fencing.return_timeout.default
    retry_base: float = Fencing.retry_base.default
    retry_max: float = Fencing.retry_max.default
    recovery_timeout: float = Fencing.recovery_timeout.default
    self_fence: bool = Fencing.self_fence.default
    self_fence_margin: float = Fencing.self_fence_margin.default
    bmc_check_interval: float = Fencing.bmc_check_interval.default  # 0: no checks
    bmc_check_parallel: int = Fencing.bmc_check_parallel.default


@dataclass(frozen=True)
class WatchdogConfig:
    """The node's self-fencing watchdog (all times in seconds)."""

    enabled: bool = Watchdog.enabled.default
    device: str = Watchdog.device.default
    timeout: float = Watchdog.timeout.default
    cut_off_after: float = Watchdog.cut_off_after.default
    feed_interval: float = Watchdog.feed_interval.default
    api_check_interval: float = Watchdog.api_check_interval.default
    # "device": set the timeout and read back what the driver applied (WDIOC_SETTIMEOUT /
    # WDIOC_GETTIMEOUT): the leader's proof counts that value. "config": trust `timeout` as is
    # (only for an emulated watchdog that has no ioctls).
    timeout_from: str = Watchdog.timeout_from.default


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent config."""

    path: str
    cluster: str = Top.cluster.default
    broker: BrokerConfig = BrokerConfig()
    profile: str = Detection.profile.default
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    max_unhealthy: str = Detection.max_unhealthy.default
    kube: KubeConfig = KubeConfig()
    health_host: str = Health.host.default
    health_port: int = Health.port.default
    health_advertise: str | None = None
    inventory: str | None = None
    fencing: FencingConfig = FencingConfig()
    metrics_host: str = Metrics.host.default
    metrics_port: int = Metrics.port.default
    auth: AuthConfig = field(default_factory=AuthConfig)
    watchdog: WatchdogConfig = WatchdogConfig()
    # Every broker when `broker.endpoints` lists several; empty: `broker` is the only one.
    broker_endpoints: tuple[BrokerConfig, ...] = ()
    virtualization: str = Top.virtualization.default  # auto (discovery), deckhouse, kubevirt

    @property
    def brokers(self) -> tuple[BrokerConfig, ...]:
        """Every broker the agent publishes to and the leader listens to (at least one);
        `broker` is the first."""
        return self.broker_endpoints or (self.broker,)


# What one entry of broker.endpoints may set; the rest comes from `broker:` itself.
_ENDPOINT = {"host", "port", "tls", *Broker.password.fields}


def load_config(path: Path | str, env: dict[str, str] | None = None) -> AgentConfig:
    """Read and validate the agent config; raise `ConfigError` on any flaw."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(path, "", f"cannot read the file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    except (yaml.YAMLError, ValueError, RecursionError):
        # ValueError: e.g. an integer beyond Python's digit limit; RecursionError: nesting.
        raise ConfigError(path, "", "not valid YAML") from None
    return parse_config(doc, path=path, env=env)


def parse_config(doc: Any, *, path: Path, env: dict[str, str]) -> AgentConfig:
    """Validate an already-parsed config document (see `load_config`)."""
    root = FieldReader(path, env, _Field(path))
    top = root.mapping(doc, fields_of(AGENT_OPTIONS, ""))
    cluster = root.read(top, Top.cluster)
    if any(c in cluster for c in "/+#") or not cluster.replace("-", "").replace(".", "").isalnum():
        raise root.fail("cluster", "use letters, digits, '-' and '.' only")
    broker, endpoints = _brokers(*_section(root, top, "broker"))
    dr, d = _section(root, top, "detection")
    overrides = d.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise dr.fail("overrides", "must be a mapping of profile fields")
    max_unhealthy = _max_unhealthy(dr, d.get("max_unhealthy", Detection.max_unhealthy.default))
    kr, k = _section(root, top, "kubernetes")
    kube = KubeConfig(**kr.read_all(k, options_in(Kube)))
    if not kube.retry_period < kube.renew_deadline < kube.lease_duration:
        raise kr.fail("renew_deadline", "must hold: retry_period < renew_deadline < lease_duration")
    hr, h = _section(root, top, "health")
    health = hr.read_all(h, options_in(Health))
    advertise = health["advertise"]
    if advertise is not None:
        host, _, port = advertise.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise hr.fail("advertise", f"must be host:port, got {brief(advertise)}")
    fr, f = _section(root, top, "fencing")
    fencing = FencingConfig(**fr.read_all(f, options_in(Fencing)))
    if 0 < fencing.bmc_check_interval < 1:
        raise fr.fail("bmc_check_interval", "must be 0 (no checks) or at least 1 second")
    auth = read_auth(*_section(root, top, "auth"))
    watchdog = _watchdog(*_section(root, top, "watchdog"))
    metrics = root.at("metrics").read_all(_section(root, top, "metrics")[1], options_in(Metrics))
    virtualization = root.read(top, Top.virtualization)
    inventory = root.read(top, Top.inventory)
    if inventory is not None:
        inventory = str(relative_to(path, inventory))
    return AgentConfig(
        path=str(path),
        cluster=cluster,
        broker=broker,
        profile=dr.read(d, Detection.profile),
        profile_overrides=dict(overrides),
        max_unhealthy=max_unhealthy,
        kube=kube,
        health_host=health["host"],
        health_port=health["port"],
        health_advertise=advertise,
        inventory=inventory,
        fencing=fencing,
        metrics_host=metrics["host"],
        metrics_port=metrics["port"],
        auth=auth,
        watchdog=watchdog,
        broker_endpoints=endpoints,
        virtualization=virtualization,
    )


def _section(
    root: FieldReader, top: dict[str, Any], name: str
) -> tuple[FieldReader, dict[str, Any]]:
    """A reader at section `name` and its mapping, checked for unknown fields (absent: {})."""
    r = root.at(name)
    return r, r.mapping(top.get(name) or {}, fields_of(AGENT_OPTIONS, name))


def _brokers(r: FieldReader, b: dict[str, Any]) -> tuple[BrokerConfig, tuple[BrokerConfig, ...]]:
    """The first broker and, with `endpoints`, every broker (shared settings applied)."""
    tr = r.at("tls")
    tls = tr.mapping(b.get("tls") or {}, fields_of(AGENT_OPTIONS, "broker.tls"))
    username = r.read(b, Broker.username)
    if username is None and b.get("username_env") is not None:
        var = r.string(b, "username_env")
        username = r.env.get(var) or None
        if username is None:
            raise r.fail("username_env", f"environment variable {var} is not set")
    shared = BrokerConfig(
        host=r.read(b, Broker.host),
        port=r.read(b, Broker.port),
        username=username,
        password=r.secret(b, Broker.password, required=False),
        **tr.read_all(tls, (Broker.ca_file, Broker.cert_file, Broker.key_file)),
        keepalive=r.read(b, Broker.keepalive),
        reconnect_min=r.read(b, Broker.reconnect_min),
        reconnect_max=r.read(b, Broker.reconnect_max),
    )
    raw = b.get("endpoints")
    if raw is None:
        return shared, ()
    if "host" in b or "port" in b:
        raise r.fail("endpoints", "set either broker.host/port or broker.endpoints, not both")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BROKERS:
        raise r.fail("endpoints", f"must be a list of 1 to {MAX_BROKERS} {{host: ...}} entries")
    endpoints: list[BrokerConfig] = []
    for i, item in enumerate(raw):
        er = r.at(f"endpoints[{i}]")
        e = er.mapping(item, _ENDPOINT)
        etr = er.at("tls")
        etls = etr.mapping(e.get("tls") or {}, fields_of(AGENT_OPTIONS, "broker.tls"))
        own_secret = any(k in e for k in Broker.password.fields)
        endpoint = replace(
            shared,
            host=er.string(e, "host"),
            port=er.read(e, Broker.port),
            password=er.secret(e, Broker.password, required=False)
            if own_secret
            else shared.password,
        )
        if etls:
            endpoint = replace(
                endpoint, **etr.read_all(etls, (Broker.ca_file, Broker.cert_file, Broker.key_file))
            )
        if any(x.address == endpoint.address for x in endpoints):
            raise er.fail("host", f"{endpoint.address} is listed twice")
        endpoints.append(endpoint)
    return endpoints[0], tuple(endpoints)


def _watchdog(r: FieldReader, w: dict[str, Any]) -> WatchdogConfig:
    cfg = WatchdogConfig(**r.read_all(w, options_in(Watchdog)))
    if cfg.feed_interval * 2 > cfg.timeout:
        raise r.fail("feed_interval", "must be at most half of watchdog.timeout")
    if cfg.api_check_interval * 2 > cfg.cut_off_after:
        raise r.fail(
            "cut_off_after",
            "must be at least twice watchdog.api_check_interval (one missed check is no cut-off)",
        )
    return cfg


def _max_unhealthy(r: FieldReader, raw: Any) -> str:
    """`detection.max_unhealthy`: a count or a percentage, as text."""
    huge = isinstance(raw, int) and raw.bit_length() > 64
    if isinstance(raw, bool) or not isinstance(raw, str | int) or huge:
        raise r.fail("max_unhealthy", f"must be a count or a percentage, got {brief(raw)}")
    value = str(raw)
    text = value[:-1] if value.endswith("%") else value
    if not (text.isdigit() and (not value.endswith("%") or 0 < int(text) <= 100)):
        raise r.fail(
            "max_unhealthy",
            f"must be a count (e.g. 3) or a percentage (e.g. 40%), got {brief(value)}",
        )
    return value
