"""Root on one worker: what it holds, and that it cannot fence, unfence or speak for another node.

The attacker is given everything one worker's node-agent pod and its kubelet can read, taken
from the shipped manifests (the watchdog overlay: the most a node agent ever gets): the files
its pod mounts (its config, its MQTT password, its own node key), the ServiceAccount token of
its pod (`nodefence-agent`, which its kubelet can always request) and every key of every Secret
its pods reference (the kubelet fetches whole Secrets: every node's MQTT password). Then, on a
simulated cluster whose API server enforces the shipped RBAC (the project's evaluator,
tests/test_deploy.py, over each recorded request) and whose brokers enforce the shipped ACL:

- no loot is a BMC password, the fencer key or the fencers' broker password, and the victim's
  BMC refuses every loot secret (`nodefence fence -a off` with each one): its machine stays on;
- every write the fencers make (delete or taint a Node, a FenceOperation, a NodeKey, the leader
  Lease, pods, evictions, VolumeAttachments) is refused (403), and the evaluator over the
  recorded requests agrees; the store is unchanged; its token reads no Secret;
- logged in to the brokers as the victim and as its peers (their passwords are loot), it
  announces its own key as the victim's, sends heartbeats for the victim under every key it can
  make, and answers the fencers' probe requests about the victim with "reachable": the victim's
  pin stays, and when its power is cut it is fenced all the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from nodefence.agent.config.node_key_file import read_key_file
from nodefence.agent.heartbeat.codec import Heartbeat, encode_heartbeat, heartbeat_topic
from nodefence.agent.heartbeat.node_identity import (
    Identity,
    encode_identity,
    identity_topic,
    signed_bytes,
    with_mac,
)
from nodefence.agent.heartbeat.node_keys import agreed_key, decode_key, mac_of, public_of
from nodefence.agent.heartbeat.signing import sign_own
from nodefence.agent.leader.view_codec import view_topic
from nodefence.agent.probes.peers import (
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
)
from nodefence.agent.probes.signing import sign_result_own
from nodefence.hwsim.kube import KubeApiServer, RequestRecord
from nodefence.hwsim.simcluster_settings import FENCER_USER, ClusterSettings
from tests.conftest import run_cli
from tests.support.deploy import (
    ACCOUNT,
    FENCER,
    NAMESPACE,
    Obj,
    ShippedBrokerCluster,
    container,
    pod_spec,
    render,
    shipped_acl,
)
from tests.support.rbac import denied, grants_for, rec, serve_rbac
from tests.support.timings import RUN_TIMINGS

TARGET = "overlays/watchdog"  # the node agent's widest rights and mounts


def referenced_secrets(docs: list[Obj], kind: str) -> set[str]:
    """The Secrets the pods of workload `kind` reference (volumes, env, envFrom)."""
    spec = pod_spec(docs, kind)
    names = {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                names.add(src["secretRef"]["name"])
    return names


def test_a_workers_pods_reference_only_the_nodes_mqtt_passwords_and_mount_its_own_key() -> None:
    docs = render(TARGET)
    assert referenced_secrets(docs, "DaemonSet") == {"nodefence-mqtt-agents"}
    assert pod_spec(docs)["serviceAccountName"] == ACCOUNT
    host = {v["hostPath"]["path"] for v in pod_spec(docs)["volumes"] if "hostPath" in v}
    assert host == {"/var/lib/nodefence", "/dev/watchdog"}  # its own key; the watchdog
    mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert not any("inventory" in m or "fencer" in m or "heartbeat" in m for m in mounts)
    # Its token reads no Secret (its kubelet reads only those its pods reference).
    grants = grants_for(docs, NAMESPACE, ACCOUNT)
    for name in ("nodefence-inventory", "nodefence-fencer-key", "nodefence-mqtt-fencer"):
        assert denied(grants, [rec("get", "secrets", NAMESPACE, name)]), name
    assert denied(grants, [rec("list", "secrets")])
    assert referenced_secrets(docs, "Deployment") >= {
        "nodefence-inventory",
        "nodefence-fencer-key",
        "nodefence-mqtt-fencer",
    }


def rbac_authorizer(docs: list[Obj]) -> Any:
    """The API server's authorization by the rendered RBAC, for requests with a token; the
    harness's own (no token: kubectl, the simulators) pass."""
    grants = {a: grants_for(docs, NAMESPACE, a) for a in (ACCOUNT, FENCER)}

    def decide(req: RequestRecord) -> bool:
        return not req.user or not denied(grants.get(req.user, []), [req])

    return decide


def api_call(
    kube: KubeApiServer, token: str, method: str, path: str, body: Obj | None = None
) -> int:
    """One raw API request with `token`; its HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
    req = urllib.request.Request(
        kube.url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": kind,
            "User-Agent": "compromised-node",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def api_attacks(victim: str, pod: Obj) -> list[tuple[str, str, Obj | None]]:
    """What fencing (and unfencing) takes, tried with the node agents' token."""
    pods = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
    records = f"/apis/nodefence.io/v1alpha1/namespaces/{NAMESPACE}/fenceoperations"
    pins = f"/apis/nodefence.io/v1alpha1/namespaces/{NAMESPACE}/nodekeys"
    lease = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/nodefence-leader"
    taint = {"key": "node.kubernetes.io/out-of-service", "value": "x", "effect": "NoExecute"}
    return [
        ("DELETE", f"/api/v1/nodes/{victim}", None),
        ("PATCH", f"/api/v1/nodes/{victim}", {"spec": {"taints": [taint]}}),
        ("PATCH", f"/api/v1/nodes/{victim}", {"metadata": {"annotations": {"x": "y"}}}),
        ("POST", records, {"metadata": {"name": "forged"}, "spec": {"nodeName": victim}}),
        ("POST", pins, {"metadata": {"name": "forged"}, "spec": {"nodeName": "forged"}}),
        ("DELETE", f"{pins}/{victim}", None),
        ("PATCH", lease, {"spec": {"holderIdentity": "forged"}}),
        ("DELETE", pods, None),
        ("POST", f"{pods}/eviction", {"metadata": pod["metadata"]}),
        ("DELETE", "/apis/storage.k8s.io/v1/volumeattachments/any", None),
    ]


def loot_inventory(real: Path, victim: str, loot: dict[str, str], out: Path) -> Path:
    """The victim's BMC entry (address, port, user), once per loot secret as its password."""
    doc = yaml.safe_load(real.read_text())
    levels = []
    for i, secret in enumerate(v for _, v in sorted(loot.items())):
        (out / f"loot-{i}").write_text(secret + "\n")
        for level in doc["nodes"][victim]["levels"]:
            devices = [{**d, "password_file": str(out / f"loot-{i}")} for d in level["devices"]]
            for d in devices:
                d["name"] = f"{d['name']}-{i}"
                if "ca_file" in d:
                    d["ca_file"] = str(real.parent / d["ca_file"])
            levels.append({"devices": devices})
    doc["nodes"] = {victim: {"levels": levels}}
    path = out / "loot-inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Forger:
    """The attacker on the brokers: logged in as the victim and as each peer."""

    def __init__(self, cluster: ShippedBrokerCluster, attacker: str, victim: str) -> None:
        self.cluster, self.victim = cluster, victim
        own = read_key_file(cluster.workdir / "nodekeys" / attacker / "node.key")
        fencer_public = decode_key(cluster.fencer_public or "")
        attacker_public = public_of(own)
        # Every key it can make: its own (agreed as itself) and as if its key were the victim's.
        self.keys = [
            agreed_key(own, fencer_public, attacker, fencer_public, attacker_public),
            agreed_key(own, fencer_public, victim, fencer_public, attacker_public),
        ]
        ident = Identity(victim, attacker_public, fencer_public, "127.0.0.1:1")
        self.identity = with_mac(ident, mac_of(self.keys[1], signed_bytes(ident)))
        self.echoes = 0  # forged heartbeats the broker delivered back (as the victim it may read)
        self.answered = 0  # forged answers to real probe requests
        self.alerts: set[tuple[str, str]] = set()  # (kind, node) the leader's view showed
        self.rejected: dict[str, int] = {}  # the leader's rejection counts, as last viewed

    def client(self, user: str, port: int) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            username=user,
            password=self.cluster.passwords[user],
            identifier=f"forger-{user}-{port}",
            timeout=5,
        )

    async def run(self, stop: asyncio.Event) -> None:
        port = self.cluster.brokers[0].port
        cluster = "sim"
        peers = [n for n in self.cluster.nodes if n != self.victim]
        async with self.client(self.victim, port) as as_victim:
            await as_victim.publish(
                identity_topic(cluster, self.victim),
                encode_identity(self.identity),
                qos=1,
                retain=True,
            )
            await as_victim.subscribe(heartbeat_topic(cluster, self.victim), qos=0)
            await as_victim.subscribe(probe_filter(cluster), qos=0)
            await as_victim.subscribe(view_topic(cluster), qos=0)
            answering = {p: self.client(p, port) for p in peers}
            for c in answering.values():
                await c.__aenter__()
            try:
                await asyncio.gather(
                    self._beat(as_victim, cluster, stop),
                    self._listen(as_victim, answering, cluster, stop),
                )
            finally:
                for c in answering.values():
                    await c.__aexit__(None, None, None)

    async def _beat(self, client: aiomqtt.Client, cluster: str, stop: asyncio.Event) -> None:
        seq = 0
        while not stop.is_set():
            now = int(time.time() * 1000)
            base = Heartbeat(self.victim, seq, "forged-boot", 0.5, "forged", ts=now)
            for hb in [base] + [sign_own(base, k) for k in self.keys]:
                await client.publish(
                    heartbeat_topic(cluster, self.victim), encode_heartbeat(hb), qos=0
                )
            seq += 1
            await asyncio.sleep(0.2)  # a heartbeat period: the pace, not a synchronisation

    async def _listen(
        self,
        client: aiomqtt.Client,
        peers: dict[str, aiomqtt.Client],
        cluster: str,
        stop: asyncio.Event,
    ) -> None:
        async def messages() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                topic = str(message.topic)
                if topic == heartbeat_topic(cluster, self.victim):
                    self.echoes += b"forged-boot" in payload
                    continue
                if topic == view_topic(cluster):
                    view = json.loads(payload)
                    self.alerts |= {(a["kind"], a["node"]) for a in view["alerts"]}
                    self.rejected = view["rejected"]
                    continue
                req = decode_request(payload)
                if req is None or req.suspect != self.victim:
                    continue
                for peer in req.peers:
                    res = ProbeResult(req.id, peer, self.victim, True, ts=int(time.time() * 1000))
                    for key in self.keys:
                        await peers[peer].publish(
                            result_topic(cluster, peer),
                            encode_result(sign_result_own(res, key)),
                            qos=0,
                        )
                    self.answered += 1

        task = asyncio.create_task(messages())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_root_on_one_worker_cannot_fence_unfence_or_speak_for_another_node(
    tmp_path: Path,
) -> None:
    docs = render(TARGET)
    settings = ClusterSettings(nodes=4, fencers=2, bmcs=True, vms=4, **RUN_TIMINGS)
    cluster = ShippedBrokerCluster(tmp_path / "cluster", settings, shipped_acl())
    serve_rbac(cluster.kube)
    cluster.kube.authorizer = rbac_authorizer(docs)
    cluster.start()
    try:
        # node-1 and node-2 host the fencers (and the brokers); node-4 is a plain worker.
        attacker, victim = "node-4", "node-3"
        assert attacker not in cluster.fencer_hosts and victim not in cluster.fencer_hosts
        leader = cluster.wait_for("a leader", cluster.leader, 60)

        def pins() -> dict[str, str]:
            items = cluster.kube.store.list("nodekeys", NAMESPACE)["items"]
            return {i["spec"]["nodeName"]: i["spec"]["publicKey"] for i in items}

        pinned = cluster.wait_for("every node pinned", lambda: len(pins()) == 4 and pins(), 60)

        # -- the loot: what its pod mounts, its kubelet reads, and its account's token --------
        loot = {f"mqtt password of {n}": cluster.passwords[n] for n in cluster.nodes}
        key_file = cluster.workdir / "nodekeys" / attacker / "node.key"
        loot["its own node key"] = key_file.read_text().strip()
        loot["its ServiceAccount token"] = ACCOUNT
        config_text = cluster.agent_config(attacker).read_text()
        assert cluster.bmcs is not None and cluster.fencer_key
        off_limits = {
            cluster.bmcs.password,
            cluster.fencer_key,
            cluster.passwords[FENCER_USER],
        }
        for name, value in loot.items():
            assert value not in off_limits, name
        assert not any(v in config_text for v in off_limits)

        # -- its BMC attempt: every loot secret against the victim's BMC ----------------------
        inventory = cluster.settings.inventory
        assert inventory is not None
        tried = loot_inventory(Path(inventory), victim, loot, tmp_path)
        fence = asyncio.run(run_cli("fence", victim, "-i", str(tried), "-a", "off", "--yes"))
        assert fence.code != 0, fence.out
        machine = cluster.fleet[victim]
        assert machine.power_state() == "on" and machine.off_requests_by_channel() == {}

        # -- its API attempts with the node agents' token -------------------------------------
        pod = next(
            p
            for p in cluster.kube.store.list("pods")["items"]
            if (p.get("spec") or {}).get("nodeName") == victim
        )
        lease_before = cluster.kube.store.get("leases", "nodefence-leader", NAMESPACE)["spec"]
        attacks = api_attacks(victim, pod)
        codes = [api_call(cluster.kube, ACCOUNT, m, p, b) for m, p, b in attacks]
        assert codes == [403] * len(attacks), list(zip(attacks, codes, strict=True))
        mine = [r for r in cluster.kube.requests if r.user_agent == "compromised-node"]
        assert len(mine) == len(attacks) and all(r.code == 403 for r in mine)
        watchdog_grants = grants_for(docs, NAMESPACE, ACCOUNT)
        assert len(denied(watchdog_grants, mine)) == len({(r.verb, r.path) for r in mine})
        node = cluster.kube.store.get("nodes", victim)
        assert not (node.get("spec") or {}).get("taints")
        assert "x" not in (node["metadata"].get("annotations") or {})
        assert cluster.kube.store.list("fenceoperations", NAMESPACE)["items"] == []
        meta = pod["metadata"]
        assert cluster.kube.store.get("pods", meta["name"], meta["namespace"])
        assert pins() == pinned
        assert (
            cluster.kube.store.get("leases", "nodefence-leader", NAMESPACE)["spec"][
                "holderIdentity"
            ]
            == lease_before["holderIdentity"]
        )

        # -- on the brokers: as the victim and its peers, while the victim's power is cut -----
        forger = Forger(cluster, attacker, victim)

        async def attack() -> dict[str, Any]:
            stop = asyncio.Event()
            task = asyncio.create_task(forger.run(stop))
            try:
                deadline = time.monotonic() + 30
                while forger.echoes < 5:  # the brokers carry its forgeries to the fencers
                    assert time.monotonic() < deadline and not task.done(), "no forged echo"
                    await asyncio.sleep(0.1)
                machine.cut_power()
                record = await asyncio.to_thread(
                    cluster.wait_for, "the victim fenced", lambda: fenced(cluster, victim), 90
                )
            finally:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
            return record

        record = asyncio.run(attack())
        assert record["status"]["proof"], record
        assert forger.answered > 0, "no probe request about the victim was answered: no test"
        assert pins() == pinned  # its announced key was never pinned for the victim
        assert pinned[victim] != base64.b64encode(forger.identity.key).decode()
        # ... and the leader said so: the key announced for the victim, the forged signatures.
        assert ("key-mismatch", victim) in forger.alerts, forger.alerts
        assert forger.rejected.get("key_mismatch", 0) >= 1, forger.rejected
        assert forger.rejected.get("bad_signature", 0) >= 1, forger.rejected
        assert cluster.leader() in cluster.fencer_hosts and leader in cluster.fencer_hosts
    finally:
        cluster.stop()


def fenced(cluster: ShippedBrokerCluster, node: str) -> dict[str, Any] | None:
    """The victim's FenceOperation once its power-off is proven, else None."""
    for r in cluster.kube.store.list("fenceoperations", NAMESPACE)["items"]:
        if r["spec"]["nodeName"] == node and (r.get("status") or {}).get("proof"):
            return dict(r)
    return None
