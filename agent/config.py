"""The agent's own config file (YAML): cluster name, broker, detection, Kubernetes, health.

Validated at start; a `ConfigError` names the file and the field. Secrets (the broker
password) come only from a file or an environment variable and are held as `Secret`.

    cluster: prod-a                 # MQTT topic namespace; one per Kubernetes cluster
    broker:
      host: mqtt.nodefence.svc      # one broker; or several (each heartbeat goes to all):
      port: 1883                    # endpoints: [{host: mqtt-0.x, port: 1883}, {host: mqtt-1.x}]
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
      lease_duration: 5             # chosen for a fast takeover (operator guide: API cost)
      renew_deadline: 3
      retry_period: 1
      standbys: 2                   # warm standby candidates the leader names (0: none)
      cold_retry_period: 10         # how often the other agents read the leader Lease
    health:
      host: 0.0.0.0                 # the agent's health endpoint, probed by peers
      port: 9440
      advertise: null               # "host:port" peers should probe (default: node IP + port)
    inventory: /etc/nodefence/inventory/inventory.yaml   # without it: detect and report only
    virtualization: auto            # auto (every VM API served) | deckhouse | kubevirt
    fencing:
      max_parallel: 2               # fencing operations at once
      after_proof: off              # off (leave it off) | reboot (power on after cleanup)
      cleanup: delete               # delete (the Node) | taint (keep it, out-of-service)
      release: true                 # force-delete its pods, remove its VolumeAttachments
      release_timeout: 60           # how long its VolumeAttachments may take to go
      return_timeout: 900           # cleanup taint + reboot: wait this long for it to return
      retry_base: 5                 # FenceFailed retries: 5 s, 10 s, ... up to retry_max
      retry_max: 60
      recovery_timeout: 300         # how long to wait for ColdStandby VMs to run elsewhere
      self_fence: false             # count a watchdog self-fence as proof (see watchdog)
      self_fence_margin: 10         # seconds added to the node's watchdog deadline
      bmc_check_interval: 300       # the leader checks every BMC once per interval (0: never)
      bmc_check_parallel: 2         # BMC checks at once
    metrics:
      host: 0.0.0.0                 # Prometheus /metrics
      port: 9441                    # 0 picks a free port (simulations)
    auth:                           # signed heartbeats (agent.heartbeat_auth, agent.node_keys)
      node_key_file: /var/lib/nodefence/node.key   # node agents: their own key, made if missing
      fencer_public_keys: [<base64>]   # node agents: the fencer key's public half (first signs)
      fencer_key_file: /etc/nodefence/fencer/key   # fencers: the fencer key (the cluster's key)
      fencer_also_accept_files: []  # fencers: further fencer keys accepted (rotation)
      mode: required                # off | permissive | required (default: required with a key)
      max_skew: 30                  # replay window: |sender clock - receiver clock| in seconds
      heartbeat_key_file: null      # the cluster key of releases before the fencer split, or
                                    #   heartbeat_key_env (>= 32 bytes): during the upgrade only
      also_accept_files: []         # further such keys the fencers accept (their rotation)
    watchdog:                       # self-fencing (agent.watchdog); off unless enabled
      enabled: false
      device: /dev/watchdog
      timeout: 60                   # the device's timeout, as configured in its driver
      cut_off_after: 30             # stop feeding after this long without broker and API
      feed_interval: 1
      api_check_interval: 5         # how often the agent asks the API whether it is fenced
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.brief import brief
from agent.node_keys import BadKey, decode_key
from agent.virt_names import AUTO, MODES
from backends.spec import Secret

MAX_NUMBER = 1e9  # no setting needs more; bounds every number before any float conversion


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
    """How to reach one MQTT broker (one entry of `broker.endpoints`, or the only one)."""

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

    @property
    def address(self) -> str:
        """`host:port`, the broker's name in logs and metrics."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class KubeConfig:
    """Where the Kubernetes API is and how leadership is elected."""

    kubeconfig: str | None = None
    namespace: str = "nodefence"
    lease_name: str = "nodefence-leader"
    lease_duration: float = 5.0
    renew_deadline: float = 3.0
    retry_period: float = 1.0
    standbys: int = 2
    cold_retry_period: float = 10.0


@dataclass(frozen=True)
class FencingConfig:
    """How the leader runs fencing operations."""

    max_parallel: int = 2
    after_proof: Literal["off", "reboot"] = "off"
    cleanup: Literal["delete", "taint"] = "delete"
    release: bool = True
    release_timeout: float = 60.0
    return_timeout: float = 900.0
    retry_base: float = 5.0
    retry_max: float = 60.0
    recovery_timeout: float = 300.0
    self_fence: bool = False
    self_fence_margin: float = 10.0
    bmc_check_interval: float = 300.0  # 0: the leader does not check the BMCs
    bmc_check_parallel: int = 2


@dataclass(frozen=True)
class AuthConfig:
    """Signatures: the mode (`agent.heartbeat_auth.AuthMode` value) and the keys.

    The key files of the two roles are only named here; each role reads its own at start
    (`agent.auth_keys`): a node agent has no fencer key, a fencer no node key. `key` and
    `also_accept` are the old cluster key and its rotation keys (the upgrade only).
    """

    mode: str = "off"
    key: Secret | None = None
    max_skew: float = 30.0
    also_accept: tuple[Secret, ...] = ()
    node_key_file: str | None = None
    fencer_public_keys: tuple[bytes, ...] = ()
    fencer_key_file: str | None = None
    fencer_also_accept_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class WatchdogConfig:
    """The node's self-fencing watchdog (all times in seconds)."""

    enabled: bool = False
    device: str = "/dev/watchdog"
    timeout: float = 60.0
    cut_off_after: float = 30.0
    feed_interval: float = 1.0
    api_check_interval: float = 5.0
    # "device": set the timeout and read back what the driver applied (WDIOC_SETTIMEOUT /
    # WDIOC_GETTIMEOUT): the leader's proof counts that value. "config": trust `timeout` as is
    # (only for an emulated watchdog that has no ioctls).
    timeout_from: str = "device"


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
    health_advertise: str | None = None
    inventory: str | None = None
    fencing: FencingConfig = FencingConfig()
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9441
    auth: AuthConfig = AuthConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    # Every broker when `broker.endpoints` lists several; empty: `broker` is the only one.
    broker_endpoints: tuple[BrokerConfig, ...] = ()
    virtualization: str = AUTO  # which VM APIs: auto (discovery), deckhouse, kubevirt

    @property
    def brokers(self) -> tuple[BrokerConfig, ...]:
        """Every broker the agent publishes to and the leader listens to (at least one);
        `broker` is the first."""
        return self.broker_endpoints or (self.broker,)


_TOP = {
    "cluster",
    "broker",
    "detection",
    "kubernetes",
    "health",
    "inventory",
    "fencing",
    "metrics",
    "auth",
    "watchdog",
    "virtualization",
}
_FENCING = {
    "max_parallel",
    "after_proof",
    "cleanup",
    "release",
    "release_timeout",
    "return_timeout",
    "retry_base",
    "retry_max",
    "recovery_timeout",
    "self_fence",
    "self_fence_margin",
    "bmc_check_interval",
    "bmc_check_parallel",
}
_AUTH = {
    "heartbeat_key_file",
    "heartbeat_key_env",
    "mode",
    "max_skew",
    "also_accept_files",
    "node_key_file",
    "fencer_public_keys",
    "fencer_key_file",
    "fencer_also_accept_files",
}
_WATCHDOG = {
    "enabled",
    "device",
    "timeout",
    "cut_off_after",
    "feed_interval",
    "api_check_interval",
    "timeout_from",
}
_BROKER = {
    "host",
    "port",
    "endpoints",
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
# What one entry of broker.endpoints may set; the rest comes from `broker:` itself.
_ENDPOINT = {"host", "port", "password_file", "password_env", "tls"}
MAX_BROKERS = 8  # every heartbeat goes to each: a few suffice (kronosnet carries up to 8 links)
_DETECTION = {"profile", "overrides", "max_unhealthy"}
_KUBE = {
    "kubeconfig",
    "namespace",
    "lease_name",
    "lease_duration",
    "renew_deadline",
    "retry_period",
    "standbys",
    "cold_retry_period",
}
_HEALTH = {"host", "port"}
_HEALTH_AGENT = {"host", "port", "advertise"}


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
    r = _Reader(path, env)
    top = r.mapping(doc, "", _TOP)
    cluster = r.string(top, "cluster", "default")
    if any(c in cluster for c in "/+#") or not cluster.replace("-", "").replace(".", "").isalnum():
        raise ConfigError(path, "cluster", "use letters, digits, '-' and '.' only")
    broker, endpoints = _brokers(r, r.mapping(top.get("broker") or {}, "broker", _BROKER))
    d = r.mapping(top.get("detection") or {}, "detection", _DETECTION)
    overrides = d.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(path, "detection.overrides", "must be a mapping of profile fields")
    raw_max = d.get("max_unhealthy", "40%")
    huge = isinstance(raw_max, int) and raw_max.bit_length() > 64
    if isinstance(raw_max, bool) or not isinstance(raw_max, str | int) or huge:
        raise ConfigError(
            path,
            "detection.max_unhealthy",
            f"must be a count or a percentage, got {brief(raw_max)}",
        )
    max_unhealthy = str(raw_max)
    _check_max_unhealthy(path, max_unhealthy)
    k = r.mapping(top.get("kubernetes") or {}, "kubernetes", _KUBE)
    kube = KubeConfig(
        kubeconfig=r.opt_string(k, "kubeconfig", "kubernetes.kubeconfig"),
        namespace=r.string(k, "namespace", "nodefence", "kubernetes.namespace"),
        lease_name=r.string(k, "lease_name", "nodefence-leader", "kubernetes.lease_name"),
        lease_duration=r.number(k, "lease_duration", 5.0, 0.1, "kubernetes.lease_duration"),
        renew_deadline=r.number(k, "renew_deadline", 3.0, 0.1, "kubernetes.renew_deadline"),
        retry_period=r.number(k, "retry_period", 1.0, 0.01, "kubernetes.retry_period"),
        standbys=r.integer(k, "standbys", 2, 0, 16, "kubernetes.standbys"),
        cold_retry_period=r.number(
            k, "cold_retry_period", 10.0, 0.01, "kubernetes.cold_retry_period"
        ),
    )
    if not kube.retry_period < kube.renew_deadline < kube.lease_duration:
        raise ConfigError(
            path,
            "kubernetes.renew_deadline",
            "must hold: retry_period < renew_deadline < lease_duration",
        )
    h = r.mapping(top.get("health") or {}, "health", _HEALTH_AGENT)
    advertise = r.opt_string(h, "advertise", "health.advertise")
    if advertise is not None:
        host, _, port = advertise.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                path, "health.advertise", f"must be host:port, got {brief(advertise)}"
            )
    f = r.mapping(top.get("fencing") or {}, "fencing", _FENCING)
    after = r.string(f, "after_proof", "off", "fencing.after_proof")
    if after not in ("off", "reboot"):
        raise ConfigError(path, "fencing.after_proof", f"must be off or reboot, got {brief(after)}")
    cleanup = r.string(f, "cleanup", "delete", "fencing.cleanup")
    if cleanup not in ("delete", "taint"):
        raise ConfigError(path, "fencing.cleanup", f"must be delete or taint, got {brief(cleanup)}")
    fencing = FencingConfig(
        max_parallel=r.integer(f, "max_parallel", 2, 1, 100, "fencing.max_parallel"),
        after_proof=after,  # type: ignore[arg-type]
        cleanup=cleanup,  # type: ignore[arg-type]
        release=r.boolean(f, "release", True, "fencing.release"),
        release_timeout=r.number(f, "release_timeout", 60.0, 0.1, "fencing.release_timeout"),
        return_timeout=r.number(f, "return_timeout", 900.0, 1.0, "fencing.return_timeout"),
        retry_base=r.number(f, "retry_base", 5.0, 0.01, "fencing.retry_base"),
        retry_max=r.number(f, "retry_max", 60.0, 0.01, "fencing.retry_max"),
        recovery_timeout=r.number(f, "recovery_timeout", 300.0, 0.1, "fencing.recovery_timeout"),
        self_fence=r.boolean(f, "self_fence", False, "fencing.self_fence"),
        self_fence_margin=r.number(f, "self_fence_margin", 10.0, 0.0, "fencing.self_fence_margin"),
        bmc_check_interval=_check_interval(r, f),
        bmc_check_parallel=r.integer(
            f, "bmc_check_parallel", 2, 1, 64, "fencing.bmc_check_parallel"
        ),
    )
    auth = _auth(r, r.mapping(top.get("auth") or {}, "auth", _AUTH))
    watchdog = _watchdog(r, r.mapping(top.get("watchdog") or {}, "watchdog", _WATCHDOG))
    m = r.mapping(top.get("metrics") or {}, "metrics", _HEALTH)
    virtualization = r.string(top, "virtualization", AUTO)
    if virtualization not in MODES:
        raise ConfigError(
            path,
            "virtualization",
            f"must be one of {', '.join(MODES)}, got {brief(virtualization)}",
        )
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
        health_advertise=advertise,
        inventory=inventory,
        fencing=fencing,
        metrics_host=r.string(m, "host", "0.0.0.0", "metrics.host"),
        metrics_port=r.integer(m, "port", 9441, 0, 65535, "metrics.port"),
        auth=auth,
        watchdog=watchdog,
        broker_endpoints=endpoints,
        virtualization=virtualization,
    )


def _check_interval(r: _Reader, f: dict[str, Any]) -> float:
    value = r.number(f, "bmc_check_interval", 300.0, 0.0, "fencing.bmc_check_interval")
    if 0 < value < 1:
        raise ConfigError(
            r.path, "fencing.bmc_check_interval", "must be 0 (no checks) or at least 1 second"
        )
    return value


def _brokers(r: _Reader, b: dict[str, Any]) -> tuple[BrokerConfig, tuple[BrokerConfig, ...]]:
    """The first broker and, with `endpoints`, every broker (shared settings applied)."""
    path = r.path
    tls = r.mapping(b.get("tls") or {}, "broker.tls", _TLS)
    username = r.opt_string(b, "username", "broker.username")
    if username is None and b.get("username_env") is not None:
        var = r.string(b, "username_env", None, "broker.username_env")
        username = r.env.get(var) or None
        if username is None:
            raise ConfigError(path, "broker.username_env", f"environment variable {var} is not set")
    shared = BrokerConfig(
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
    raw = b.get("endpoints")
    if raw is None:
        return shared, ()
    if "host" in b or "port" in b:
        raise ConfigError(
            path, "broker.endpoints", "set either broker.host/port or broker.endpoints, not both"
        )
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BROKERS:
        raise ConfigError(
            path, "broker.endpoints", f"must be a list of 1 to {MAX_BROKERS} {{host: ...}} entries"
        )
    endpoints: list[BrokerConfig] = []
    for i, item in enumerate(raw):
        where = f"broker.endpoints[{i}]"
        e = r.mapping(item, where, _ENDPOINT)
        etls = r.mapping(e.get("tls") or {}, f"{where}.tls", _TLS)
        own_secret = "password_file" in e or "password_env" in e
        endpoint = replace(
            shared,
            host=r.string(e, "host", None, f"{where}.host"),
            port=r.integer(e, "port", 1883, 1, 65535, f"{where}.port"),
            password=r.secret(e, where) if own_secret else shared.password,
        )
        if etls:
            endpoint = replace(
                endpoint,
                ca_file=r.existing_file(etls, "ca_file", f"{where}.tls.ca_file"),
                cert_file=r.existing_file(etls, "cert_file", f"{where}.tls.cert_file"),
                key_file=r.existing_file(etls, "key_file", f"{where}.tls.key_file"),
            )
        if any(x.address == endpoint.address for x in endpoints):
            raise ConfigError(path, f"{where}.host", f"{endpoint.address} is listed twice")
        endpoints.append(endpoint)
    return endpoints[0], tuple(endpoints)


def _auth(r: _Reader, a: dict[str, Any]) -> AuthConfig:
    key = r.secret(a, "auth", base="heartbeat_key")
    publics = _fencer_publics(r, a.get("fencer_public_keys"))
    node_key = r.opt_string(a, "node_key_file", "auth.node_key_file")
    fencer_key = r.opt_string(a, "fencer_key_file", "auth.fencer_key_file")
    if (node_key is None) != (not publics):
        raise ConfigError(
            r.path,
            "auth.node_key_file" if node_key is None else "auth.fencer_public_keys",
            "node_key_file and fencer_public_keys go together (a node signs with its own key"
            " agreed with the fencer key)",
        )
    keyed = key is not None or bool(publics) or fencer_key is not None
    mode = r.string(a, "mode", "required" if keyed else "off", "auth.mode")
    if mode not in ("off", "permissive", "required"):
        raise ConfigError(
            r.path, "auth.mode", f"must be off, permissive or required, got {brief(mode)}"
        )
    if mode != "off" and not keyed:
        raise ConfigError(
            r.path,
            "auth.mode",
            f"mode {mode} needs keys: node_key_file and fencer_public_keys (node agents),"
            " fencer_key_file (fencers), or the old heartbeat_key_file",
        )
    if key is not None and len(key.reveal().encode()) < 32:
        raise ConfigError(
            r.path, "auth.heartbeat_key_file", "the key must be at least 32 bytes long"
        )
    accepted = []
    for i, file in enumerate(_paths(r, a, "also_accept_files")):
        where = f"auth.also_accept_files[{i}]"
        try:
            value = file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, ValueError) as err:  # ValueError: a NUL in the path, not UTF-8
            problem = err.strerror if isinstance(err, OSError) else _not_readable(err)
            raise ConfigError(r.path, where, f"cannot read {file}: {problem or err}") from None
        if len(value.encode()) < 32:
            raise ConfigError(r.path, where, f"the key in {file} must be at least 32 bytes long")
        accepted.append(Secret(value))
    max_skew = r.number(a, "max_skew", 30.0, 0.5, "auth.max_skew")
    return AuthConfig(
        mode,
        key,
        max_skew,
        tuple(accepted),
        node_key_file=None if node_key is None else str(_relative(r.path, node_key)),
        fencer_public_keys=publics,
        fencer_key_file=None if fencer_key is None else str(_relative(r.path, fencer_key)),
        fencer_also_accept_files=tuple(str(p) for p in _paths(r, a, "fencer_also_accept_files")),
    )


def _paths(r: _Reader, a: dict[str, Any], name: str) -> list[Path]:
    files = a.get(name) or []
    if not isinstance(files, list):
        raise ConfigError(r.path, f"auth.{name}", "must be a list of file paths")
    paths = []
    for i, item in enumerate(files):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(r.path, f"auth.{name}[{i}]", "must be a file path")
        paths.append(_relative(r.path, item.strip()))
    return paths


def _fencer_publics(r: _Reader, raw: Any) -> tuple[bytes, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= 4:
        raise ConfigError(
            r.path, "auth.fencer_public_keys", "must be a list of 1 to 4 base64 public keys"
        )
    keys = []
    for i, item in enumerate(raw):
        try:
            keys.append(decode_key(item if isinstance(item, str) else ""))
        except BadKey as err:
            raise ConfigError(
                r.path,
                f"auth.fencer_public_keys[{i}]",
                f"not a fencer public key ({err}): copy it as deploy/tools/mqtt_credentials.py"
                " prints it",
            ) from None
    return tuple(keys)


def _watchdog(r: _Reader, w: dict[str, Any]) -> WatchdogConfig:
    cfg = WatchdogConfig(
        enabled=r.boolean(w, "enabled", False, "watchdog.enabled"),
        device=r.string(w, "device", "/dev/watchdog", "watchdog.device"),
        timeout=r.number(w, "timeout", 60.0, 0.1, "watchdog.timeout"),
        cut_off_after=r.number(w, "cut_off_after", 30.0, 0.1, "watchdog.cut_off_after"),
        feed_interval=r.number(w, "feed_interval", 1.0, 0.01, "watchdog.feed_interval"),
        api_check_interval=r.number(
            w, "api_check_interval", 5.0, 0.05, "watchdog.api_check_interval"
        ),
        timeout_from=r.string(w, "timeout_from", "device", "watchdog.timeout_from"),
    )
    if cfg.timeout_from not in ("device", "config"):
        raise ConfigError(
            r.path,
            "watchdog.timeout_from",
            f"must be device or config, got {brief(cfg.timeout_from)}",
        )
    if cfg.feed_interval * 2 > cfg.timeout:
        raise ConfigError(
            r.path, "watchdog.feed_interval", "must be at most half of watchdog.timeout"
        )
    if cfg.api_check_interval * 2 > cfg.cut_off_after:
        raise ConfigError(
            r.path,
            "watchdog.cut_off_after",
            "must be at least twice watchdog.api_check_interval (one missed check is no cut-off)",
        )
    return cfg


def _check_max_unhealthy(path: Path, value: str) -> None:
    text = value[:-1] if value.endswith("%") else value
    ok = text.isdigit() and (not value.endswith("%") or 0 < int(text) <= 100)
    if not ok:
        raise ConfigError(
            path,
            "detection.max_unhealthy",
            f"must be a count (e.g. 3) or a percentage (e.g. 40%), got {brief(value)}",
        )


def _not_readable(err: ValueError) -> str:
    return "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "not a valid file name"


def _relative(path: Path, value: str) -> Path:
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~user/..." of a user that does not exist: read it as written
        p = Path(value)
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
            raise ConfigError(self.path, name, f"must be an integer {lo}-{hi}, got {brief(value)}")
        return value

    def number(self, doc: dict[str, Any], key: str, default: float, lo: float, name: str) -> float:
        value = doc.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        # Range before isfinite: a huge YAML integer would overflow the float conversion.
        if not ok or not lo <= value <= MAX_NUMBER or not math.isfinite(value):
            raise ConfigError(
                self.path, name, f"must be a number in {lo:g}..{MAX_NUMBER:g}, got {brief(value)}"
            )
        return float(value)

    def boolean(self, doc: dict[str, Any], key: str, default: bool, name: str) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.path, name, f"must be true or false, got {brief(value)}")
        return value

    def existing_file(self, doc: dict[str, Any], key: str, name: str) -> str | None:
        value = self.opt_string(doc, key, name)
        if value is None:
            return None
        p = _relative(self.path, value)
        if not p.is_file():
            raise ConfigError(self.path, name, f"no such file {p}")
        return str(p)

    def secret(self, doc: dict[str, Any], where: str, base: str = "password") -> Secret | None:
        if base in doc:
            raise ConfigError(
                self.path,
                f"{where}.{base}",
                f"inline secrets are not accepted; use {base}_file or {base}_env",
            )
        fkey, ekey = f"{base}_file", f"{base}_env"
        pfile, penv = doc.get(fkey), doc.get(ekey)
        if pfile is not None and penv is not None:
            raise ConfigError(self.path, f"{where}.{fkey}", f"set only one of {fkey} and {ekey}")
        if penv is not None:
            var = self.string(doc, ekey, None, f"{where}.{ekey}")
            value = self.env.get(var)
            if not value:
                raise ConfigError(
                    self.path, f"{where}.{ekey}", f"environment variable {var} is not set"
                )
            return Secret(value)
        if pfile is not None:
            file = _relative(self.path, self.string(doc, fkey, None, f"{where}.{fkey}"))
            try:
                value = file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, ValueError) as err:  # ValueError: a NUL in the path, not UTF-8
                problem = err.strerror if isinstance(err, OSError) else _not_readable(err)
                raise ConfigError(
                    self.path, f"{where}.{fkey}", f"cannot read {file}: {problem or err}"
                ) from None
            if not value:
                raise ConfigError(self.path, f"{where}.{fkey}", f"{file} is empty")
            return Secret(value)
        return None
