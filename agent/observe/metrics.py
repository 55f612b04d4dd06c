"""Prometheus metrics of the agent (served on `metrics.port`; the leader's are the rich ones).

Names follow Prometheus conventions; every duration is in seconds.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from nodefence.agent import __version__

_TIMES = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 60, 120, 300)

HEARTBEATS = Counter("nodefence_heartbeats_received_total", "Valid heartbeats the leader received")
REJECTED = Counter(
    "nodefence_messages_rejected_total",
    "Heartbeats and probe results dropped, by reason",
    ["reason"],
)
DUPLICATES = Counter(
    "nodefence_heartbeat_duplicates_total",
    "Copies of an already accepted heartbeat (each broker delivers one; harmless)",
)
BROKER_CONNECTED = Gauge(
    "nodefence_broker_connected",
    "1 while the leader's (or a warm standby's) session to this broker is up",
    ["broker"],
)
AGENT_BROKERS = Gauge(
    "nodefence_agent_brokers_connected",
    "Brokers this agent's heartbeat publisher is connected to",
)
IS_LEADER = Gauge("nodefence_is_leader", "1 while this agent holds the leader Lease")
IS_STANDBY = Gauge(
    "nodefence_is_standby", "1 while this agent is a warm standby (named on the leader Lease)"
)
NODES = Gauge("nodefence_nodes", "Nodes by the leader's classification", ["state"])
FROZEN = Gauge(
    "nodefence_decisions_frozen",
    "1 while a leader-wide guard (broker down, storm, new leader) holds decisions",
)
DETECTION = Histogram(
    "nodefence_detection_seconds",
    "From a node's last heartbeat to its declaration as dead",
    buckets=_TIMES,
)
FENCE = Histogram(
    "nodefence_fence_duration_seconds",
    "Power walk to a proven Off (or failure), by outcome",
    ["outcome"],
    buckets=_TIMES,
)
FENCE_FAILURES = Counter("nodefence_fence_failures_total", "Power walks that did not prove Off")
RECOVERY = Histogram(
    "nodefence_recovery_seconds",
    "From node deletion until its ColdStandby VMs run elsewhere",
    buckets=_TIMES,
)
VM_RECOVERY = Histogram(
    "nodefence_vm_recovery_seconds",
    "Per VM, its outage: from its node's last heartbeat until Running elsewhere",
    buckets=_TIMES,
)
OPERATIONS = Counter(
    "nodefence_fence_operations_total", "Fencing operations by final phase", ["phase"]
)
OPERATIONS_OPEN = Gauge(
    "nodefence_fence_operations_open",
    "Fencing operations the leader runs now, by phase (Pending, Fencing, FenceFailed, ...)",
    ["phase"],
)
ALERTS = Counter("nodefence_alerts_total", "Alerts raised, by kind", ["kind"])
PAUSED = Gauge(
    "nodefence_fencing_paused",
    "1 while fencing is paused cluster-wide (nodefence pause): nodes are judged, none is fenced",
)
BUILD_INFO = Gauge(
    "nodefence_build_info",
    "Always 1; the labels say which nodefence (version, commit) and Python this agent runs",
    ["version", "commit", "python"],
)
BMC_CHECK_OK = Gauge(
    "nodefence_bmc_check_ok",
    "1 when the last check of a BMC device passed (reachable, login, power read, power-off "
    "offered, certificate valid), else 0",
    ["node", "device", "type"],
)
BMC_CHECKS = Counter(
    "nodefence_bmc_checks_total", "BMC device checks, by result (ok or the reason)", ["result"]
)
BMC_CHECK_DURATION = Histogram(
    "nodefence_bmc_check_duration_seconds",
    "How long one BMC device check took",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
BMC_CHECKED_AT = Gauge(
    "nodefence_bmc_last_check_timestamp_seconds",
    "When a BMC device was last checked (Unix time)",
    ["node", "device"],
)
BMC_CERT_DAYS = Gauge(
    "nodefence_bmc_certificate_expiry_days",
    "Days until the TLS certificate of an HTTPS BMC expires (negative: expired)",
    ["node", "device"],
)
NODE_FENCEABLE = Gauge(
    "nodefence_node_fenceable",
    "1 when at least one fencing path of the node passed its BMC checks, 0 when it cannot be "
    "fenced",
    ["node"],
)


def serve(host: str, port: int) -> int:
    """Serve /metrics in a background thread; returns the bound port (0 picks one). Sets
    `nodefence_build_info` first, so every scrape says which build answers."""
    from nodefence.agent.observe.build_info_files import commit

    BUILD_INFO.labels(__version__, commit(), platform.python_version()).set(1)
    server, _ = start_http_server(port, addr=host)
    return int(server.server_address[1])
