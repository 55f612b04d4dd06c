"""No secret in any output: one end-to-end run of the simulated cluster (secure: broker
passwords per node and for the fencers, each node's own key, the fencer key, BMC passwords;
agents and fencers logging at debug) with a fence, plus every CLI command an operator runs,
then every log line, every CLI output, and every object stored in the Kubernetes API is
searched for every secret (also base64-encoded, as HTTP Basic auth would carry it). One hit
fails the test."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import yaml

from nodefence.hwsim.simcluster import SimCluster
from tests.conftest import run_cli
from tests.support.e2e import Make, final_record, start, victim_of


def forms(secret: str, user: str | None = None) -> set[str]:
    """The ways a secret could leak: itself, base64 of it and of user:secret (Basic auth)."""
    found = {secret, base64.b64encode(secret.encode()).decode()}
    if user:
        found.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return found


def cluster_secrets(cluster: SimCluster) -> dict[str, set[str]]:
    assert cluster.bmcs is not None and cluster.fencer_key
    found = {f"mqtt password of {u}": forms(p, u) for u, p in cluster.passwords.items()}
    found["BMC password"] = forms(cluster.bmcs.password, cluster.bmcs.username)
    found["fencer key"] = forms(cluster.fencer_key)
    # Each node's own key, as its agent made it on the node's disk at its first start.
    node_keys = sorted((cluster.workdir / "nodekeys").glob("*/node.key"))
    assert len(node_keys) == len(cluster.nodes)
    for path in node_keys:
        found[f"node key of {path.parent.name}"] = forms(path.read_text().strip())
    for name, values in found.items():
        assert all(len(v) >= 12 for v in values), name  # long enough to never match by chance
    return found


def hits(text: str, secrets: dict[str, set[str]]) -> list[str]:
    return [name for name, values in secrets.items() if any(v in text for v in values)]


def test_no_log_line_cli_output_or_stored_object_contains_a_secret(make_cluster: Make) -> None:
    cluster = start(make_cluster, log_level="debug")
    secrets = cluster_secrets(cluster)
    inventory = cluster.settings.inventory
    assert inventory is not None
    victim = victim_of(cluster)
    cluster.fleet[victim].cut_power()
    final_record(cluster, victim, ("Recovered",), timeout=60)

    agent_cfg = cluster.agent_config(victim)
    wrong = Path(inventory).with_name("wrong-inventory.yaml")
    wrong_pw = wrong.with_name("wrong-password")
    wrong_pw.write_text("not-the-password-at-all\n")
    wrong.write_text(Path(inventory).read_text().replace("bmc-password", wrong_pw.name))
    broken = agent_cfg.with_name("broken.yaml")
    doc = yaml.safe_load(agent_cfg.read_text())
    doc["broker"]["port"] = "not a port"
    broken.write_text(yaml.safe_dump(doc))
    other = next(n for n in cluster.nodes if n != victim)
    commands = [
        ("--help",),
        ("agent", "--help"),
        ("fence", "--help"),
        ("status", "-c", str(agent_cfg)),
        ("status", "-c", str(agent_cfg), "-o", "json"),
        ("bmc", "check", "-i", inventory),
        ("bmc", "check", "-i", inventory, "-o", "json"),
        ("fence", other, "-i", inventory, "-a", "status", "-o", "json"),
        ("fence", other, "-i", inventory, "--dry-run", "--yes"),
        ("fence", other, "-i", str(wrong), "-a", "status"),  # refused credentials
        ("bmc", "check", "-i", str(wrong), "-o", "json"),
        ("agent", "-c", str(broken)),  # a config error
        ("maintenance", "list", "--kubeconfig", str(cluster.kubeconfig)),
        ("explain", victim, "--kubeconfig", str(cluster.kubeconfig)),
        ("explain", victim, "-o", "json", "--kubeconfig", str(cluster.kubeconfig)),
        ("history", "--kubeconfig", str(cluster.kubeconfig)),
        ("history", victim, "-o", "json", "--kubeconfig", str(cluster.kubeconfig)),
    ]

    async def run_all() -> list[tuple[tuple[str, ...], str]]:
        out = []
        for args in commands:
            res = await run_cli(*args, timeout=60)
            out.append((args, res.out + res.err))
        return out

    outputs = asyncio.run(run_all())
    cluster.stop()  # flush and close every log

    leaks: list[str] = []
    for args, text in outputs:
        assert text.strip(), f"no output from {args}"
        leaks += [f"`nodefence {' '.join(args)}` prints the {n}" for n in hits(text, secrets)]
    logs = [p for p in cluster.workdir.rglob("*.log") if p.is_file()]
    assert any(p.name == f"{victim}.log" for p in logs) and len(logs) > len(cluster.nodes)
    debug_lines = 0
    for path in logs:
        text = path.read_text(errors="replace")
        debug_lines += text.count(" DEBUG ")
        leaks += [
            f"{path.relative_to(cluster.workdir)} contains the {n}" for n in hits(text, secrets)
        ]
    assert debug_lines > 0, "the agents did not log at debug level: the search proves little"
    stored = json.dumps(
        [cluster.kube.store.list(kind)["items"] for kind in ("events", "nodes", "leases")]
        + [cluster.kube.store.list("fenceoperations", "nodefence")["items"]]
    )
    leaks += [f"the Kubernetes API holds the {n}" for n in hits(stored, secrets)]
    assert leaks == []
