"""Every option of the agent config (`agent.yaml`), declared once: key, type, default, bounds, help.

`nodefence.agent.config.agent_file` reads the file with these, its dataclasses take their defaults
from them, and the "Agent config reference" table of docs/operator-guide.md is rendered from them
(`scripts/option-tables`). One class per section; the order is the guide's.
"""

from __future__ import annotations

from typing import Any

from nodefence.agent.config.option_schema import (
    Option,
    boolean,
    choice,
    custom,
    file,
    integer,
    number,
    opt_string,
    options_in,
    secret,
    section,
    string,
)
from nodefence.agent.virt.names import AUTO, MODES

MAX_BROKERS = 8  # every heartbeat goes to each: a few suffice (kronosnet carries up to 8 links)


class Top:
    """The top level of the file."""

    cluster = string(
        "cluster",
        "default",
        "MQTT topic namespace `nodefence/v1/<cluster>/...`; letters, digits, `-`, `.`."
        " One per Kubernetes cluster.",
    )
    broker = section("broker", "The MQTT broker or brokers.")
    detection = section("detection", "How a lost node is detected.")
    kubernetes = section("kubernetes", "The API server and the leader election.")
    health = section("health", "The health endpoint.")
    metrics = section("metrics", "The Prometheus endpoint.")
    virtualization = choice(
        "virtualization",
        AUTO,
        MODES,
        "Fencers: which VM APIs nodefence reads: `auto` (every one the API server serves, found"
        " by discovery, looked at again every 60 s; a cluster may run both), `deckhouse`"
        " (`virtualization.deckhouse.io`) or `kubevirt` (`kubevirt.io/v1`). With `auto`, an API"
        " served but not readable (403: its RBAC not deployed) is left out with a warning; a"
        " named one is not. See [KubeVirt](#kubevirt).",
        strip=True,
    )
    inventory = opt_string(
        "inventory",
        "Fencers: the BMC inventory file. Without it the fencers detect and report but never"
        " fence. The node agents never read it.",
    )
    fencing = section("fencing", "How the leader fences.")
    auth = section("auth", "Signed heartbeats and probes.")
    watchdog = section("watchdog", "Self-fencing.")


class Broker:
    """`broker:`."""

    endpoints = custom(
        "broker.endpoints",
        None,
        f"Every broker, 1 to {MAX_BROKERS} entries `{{host, port}}` (port 1883 by default); each"
        " may also set its own `password_file` / `password_env` and `tls`, the rest comes from"
        " `broker:` itself. Every heartbeat goes to each; the leader and the warm standbys"
        " listen to all. The manifests list `nodefence-mqtt-0.nodefence-mqtt.nodefence.svc` and"
        " `-1`. Not with `broker.host`/`port`.",
    )
    host = string("broker.host", "127.0.0.1", "One broker only (the older form; still accepted).")
    port = integer("broker.port", 1883, 1, 65535, "Its port.")
    username = opt_string("broker.username", "The MQTT user.")
    username_env = opt_string(
        "broker.username_env",
        "Or the variable holding it: `MQTT_USERNAME` in the manifests (the node's name in the"
        " DaemonSet, `nodefence-fencer` in the Deployment).",
    )
    password = secret("broker.password", "One of them; never inline.")
    tls = section("broker.tls", "TLS to the broker.")
    ca_file = file("broker.tls.ca_file", "TLS to the broker: the CA bundle (files must exist).")
    cert_file = file("broker.tls.cert_file", "The client certificate.")
    key_file = file("broker.tls.key_file", "Its key.")
    keepalive = integer(
        "broker.keepalive",
        10,
        1,
        3600,
        "MQTT keepalive, seconds. The broker publishes a dead agent's Last Will after 1.5 \u00d7"
        " keepalive.",
    )
    reconnect_min = number(
        "broker.reconnect_min", 0.2, 0.01, "Jittered exponential backoff between reconnects..."
    )
    reconnect_max = number("broker.reconnect_max", 5.0, 0.01, "...up to this, seconds.")


class Detection:
    """`detection:`."""

    profile = string(
        "detection.profile", "default", "`fast`, `default` or `conservative` (next section)."
    )
    overrides = custom(
        "detection.overrides",
        {},
        "Any profile field, e.g. `{fence_after: 6}`; checked for consistency.",
    )
    max_unhealthy = custom(
        "detection.max_unhealthy",
        "40%",
        "Storm guard: a count (`3`) or a percentage of the nodes (rounded down).",
    )


class Kube:
    """`kubernetes:`."""

    kubeconfig = opt_string(
        "kubernetes.kubeconfig", "`null`: the pod's ServiceAccount.", doc_default="`null`"
    )
    namespace = string(
        "kubernetes.namespace",
        "nodefence",
        "Where the leader Lease, the records and cluster-wide alert Events live. Must match the"
        " Role.",
    )
    lease_name = string(
        "kubernetes.lease_name", "nodefence-leader", "Must match the Role's `resourceNames`."
    )
    lease_duration = number(
        "kubernetes.lease_duration",
        5.0,
        0.1,
        "Leader election timing; must hold `retry_period < renew_deadline < lease_duration`. A"
        " dead leader is replaced by a warm standby `lease_duration` to `lease_duration +"
        " retry_period` after its last renewal. Chosen for a fast takeover; what it costs the"
        " API server: [Leader Lease timings](#leader-lease-timings-and-their-api-cost).",
    )
    renew_deadline = number(
        "kubernetes.renew_deadline",
        3.0,
        0.1,
        "The leader stops leading after this long without a renewal.",
    )
    retry_period = number(
        "kubernetes.retry_period",
        1.0,
        0.01,
        "The leader and the warm standbys read or renew the Lease this often.",
    )
    standbys = integer(
        "kubernetes.standbys",
        2,
        0,
        16,
        "Warm standbys the leader names on its Lease (annotation `nodefence.io/standbys`): they"
        " listen to every broker and take over first. `0`: none (every candidate reads the"
        " Lease every `retry_period`, a new leader always waits a window).",
    )
    cold_retry_period = number(
        "kubernetes.cold_retry_period",
        10.0,
        0.01,
        "Accepted for older configs; the fencers are all warm candidates and do not use it.",
    )


class Health:
    """`health:`."""

    host = string(
        "health.host",
        "0.0.0.0",
        "The health endpoint. With `0.0.0.0` the agent advertises `$NODE_IP:port` on its Node"
        " (annotation `nodefence.io/health-endpoint`) for peers.",
    )
    port = integer(
        "health.port", 9440, 0, 65535, "Its port. Change the DaemonSet's `health` port with it."
    )
    advertise = opt_string(
        "health.advertise",
        '`"host:port"` peers should probe instead (default: the node IP and `port`).',
    )


class Metrics:
    """`metrics:`."""

    host = string("metrics.host", "0.0.0.0", "Prometheus `/metrics`.")
    port = integer(
        "metrics.port",
        9441,
        0,
        65535,
        "Its port (`0`: a free one). Change the DaemonSet's `metrics` port with it.",
    )


class Fencing:
    """`fencing:` (also the defaults of `nodefence.agent.fencing.machine.Timing`)."""

    max_parallel = integer("fencing.max_parallel", 2, 1, 100, "Power walks at once.")
    after_proof = choice(
        "fencing.after_proof",
        "off",
        ("off", "reboot"),
        "`off`: leave a fenced node off. `reboot`: power it on after the cleanup (`cleanup:"
        " delete`: once the Node deletion is stored, and it re-registers as a new Node;"
        " `cleanup: taint`: once released, and it is untainted when back). `reboot` returns"
        " capacity by itself, but a machine with a recurring fault comes back to fail again;"
        " `off` waits for a person.",
        strip=True,
    )
    cleanup = choice(
        "fencing.cleanup",
        "delete",
        ("delete", "taint"),
        "What happens to the Node after the proof and the release: `delete` it, or `taint`:"
        " keep it, tainted `node.kubernetes.io/out-of-service` (Kubernetes' non-graceful node"
        " shutdown). See [Releasing the node]"
        "(#releasing-the-node-pods-volumes-the-out-of-service-taint).",
        strip=True,
    )
    release = boolean(
        "fencing.release",
        True,
        "After the proof, force-delete the node's pods and remove its VolumeAttachments."
        " `false` leaves them to PodGC and the attach/detach controller (minutes; see the"
        " section).",
    )
    release_timeout = number(
        "fencing.release_timeout",
        60.0,
        0.1,
        "How long the release waits for the node's VolumeAttachments (and its Node's"
        " `status.volumesAttached`) to go before it goes on anyway, noting what is left in the"
        " record's `errors`.",
    )
    return_timeout = number(
        "fencing.return_timeout",
        900.0,
        1.0,
        "`cleanup: taint` with `after_proof: reboot`: how long to wait for the powered-on node"
        " to be Ready and heartbeat again before ending with the taint kept.",
    )
    retry_base = number(
        "fencing.retry_base",
        5.0,
        0.01,
        "After a failed power walk (FenceFailed): retry after this many seconds, then twice"
        " as long each time, up to `retry_max`, indefinitely.",
    )
    retry_max = number("fencing.retry_max", 60.0, 0.01, "The longest pause between retries.")
    recovery_timeout = number(
        "fencing.recovery_timeout",
        300.0,
        0.1,
        "How long to wait for the fenced node's ColdStandby VMs to run elsewhere before"
        " `RecoveryIncomplete`.",
    )
    self_fence = boolean(
        "fencing.self_fence",
        False,
        "Leader side of [self-fencing](#self-fencing-with-a-hardware-watchdog): a node whose"
        " BMC devices were all unreachable may be taken as fenced once its watchdog deadline"
        " has provably passed (record `status.proof: watchdog`). The watchdog overlay sets it.",
    )
    self_fence_margin = number(
        "fencing.self_fence_margin", 10.0, 0.0, "Seconds added to that deadline."
    )
    bmc_check_interval = number(
        "fencing.bmc_check_interval",
        300.0,
        0.0,
        "The leader checks every inventory device once per interval, the checks spread evenly"
        " over it ([BMC checks](#bmc-checks)). `0`: never; otherwise at least 1.",
    )
    bmc_check_parallel = integer(
        "fencing.bmc_check_parallel", 2, 1, 64, "BMC checks at once (1\u201364)."
    )


class Auth:
    """`auth:`."""

    node_key_file = opt_string(
        "auth.node_key_file",
        "Node agents: the node's own private key file, made at the first start when missing"
        " (mode 0600; base64 of an X25519 key). The manifests: `/var/lib/nodefence/node.key` on"
        " the node (hostPath). With `fencer_public_keys`. See [Per-node keys](#per-node-keys).",
    )
    fencer_public_keys = custom(
        "auth.fencer_public_keys",
        [],
        "Node agents: the fencer key's public half (base64), as"
        " `deploy/tools/mqtt_credentials.py` prints it; the first one signs, further ones are"
        " accepted on probe requests (a fencer key rotation).",
    )
    fencer_key_file = opt_string(
        "auth.fencer_key_file",
        "Fencers: the fencer key (base64 of an X25519 private key). The manifests:"
        " `/etc/nodefence/fencer/key`, key `key` of Secret `nodefence-fencer-key`.",
    )
    fencer_also_accept_files = custom(
        "auth.fencer_also_accept_files",
        [],
        "Fencers: further fencer keys under which node keys are agreed and checked (never the"
        " one requests are signed with), for a rotation.",
    )
    mode = choice(
        "auth.mode",
        "off",
        ("off", "permissive", "required"),
        "`off`, `permissive` (unsigned heartbeats and probe results accepted and counted) or"
        " `required`. `permissive` and `required` need keys: `node_key_file` and"
        " `fencer_public_keys` (node agents), `fencer_key_file` (fencers), or the old"
        " `heartbeat_key_file`. Applies to [probe requests and results]"
        "(#signed-probe-requests-and-results) too.",
        strip=True,
        doc_default="`required` with keys, else `off`",
    )
    max_skew = number(
        "auth.max_skew",
        30.0,
        0.5,
        "Seconds a signed message's timestamp may differ from the receiver's clock (the replay"
        " window).",
    )
    heartbeat_key = secret(
        "auth.heartbeat_key",
        "UPGRADE ONLY: the cluster key of releases before the fencer split (at least 32 bytes),"
        " while old agents run; see [Upgrading from the single-role DaemonSet]"
        "(#upgrading-from-the-single-role-daemonset). Never inline.",
    )
    also_accept_files = custom(
        "auth.also_accept_files",
        [],
        "UPGRADE ONLY: further old cluster keys the fencers accept.",
    )


class Watchdog:
    """`watchdog:`."""

    enabled = boolean(
        "watchdog.enabled",
        False,
        "Node side of [self-fencing](#self-fencing-with-a-hardware-watchdog): feed the watchdog"
        " device while in contact. Needs the device in the pod (the watchdog overlay).",
    )
    device = string("watchdog.device", "/dev/watchdog", "The watchdog device.")
    timeout = number(
        "watchdog.timeout",
        60.0,
        0.1,
        "The timeout the agent sets on the device when it arms it (`WDIOC_SETTIMEOUT`);"
        " heartbeats advertise what the driver reads back (`WDIOC_GETTIMEOUT`), and the"
        " leader's deadline is computed from that.",
    )
    timeout_from = choice(
        "watchdog.timeout_from",
        "device",
        ("device", "config"),
        "`device`: set and read back the timeout as above (a device without the ioctls refuses"
        " to start). `config`: trust `timeout` as configured, for emulated watchdogs only.",
        strip=True,
    )
    cut_off_after = number(
        "watchdog.cut_off_after",
        30.0,
        0.1,
        "Stop feeding after this long without contact with the broker or the API server. At"
        " least 2 \u00d7 `api_check_interval`.",
    )
    feed_interval = number(
        "watchdog.feed_interval", 1.0, 0.01, "Seconds between feeds; at most `timeout` / 2."
    )
    api_check_interval = number(
        "watchdog.api_check_interval",
        5.0,
        0.05,
        "The agent watches the FenceOperations of its own node (label"
        ' `nodefence.io/node=<node>`, hashed for a long name: see "Old records" under'
        " [Day-2 operations](#day-2-operations)) and stops feeding as soon as one shows; it also"
        " lists them, as contact, when no heartbeat echo came back for this long.",
    )


AGENT_OPTIONS: tuple[Option[Any], ...] = tuple(
    o
    for group in (Top, Broker, Detection, Kube, Health, Metrics, Fencing, Auth, Watchdog)
    for o in options_in(group)
)
