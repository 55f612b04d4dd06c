"""The operator's commands against a simulated cluster (API emulator, emulated BMCs, VMs; no
agents): a manual fence warns about a live node and names what dies there, says "already off",
and is recorded, so `nodefence history` and `explain` show it; `pause` and `resume` write and
remove the pause on the leader Lease (what the leader does with it: the bmc-password
scenario and tests/agent/test_fence_executor.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from nodefence.agent.fencing.pause import PAUSE_ANNOTATION, Pause
from nodefence.hwsim.simcluster import SimCluster
from tests.conftest import Result

Make = Callable[..., SimCluster]


def nodefence(*argv: str) -> Result:
    """`nodefence ARGV` in this process: parsed by the CLI's own parser and run by the
    command's own function, with its output caught. One Kubernetes client import for all the
    commands of a test instead of one per process (seconds each on a busy machine); Ctrl-C
    and the prompt need a terminal: tests/e2e/test_cli_interrupt.py."""
    from nodefence.agent.cli.explain import run_explain
    from nodefence.agent.cli.fence import run_fence
    from nodefence.agent.cli.history import run_history
    from nodefence.agent.cli.main import build_parser
    from nodefence.agent.cli.pause import run_pause

    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[..., int]] = {
        "fence": run_fence,
        "history": run_history,
        "explain": run_explain,
        "pause": run_pause,
        "resume": run_pause,
    }
    out, err = io.StringIO(), io.StringIO()
    code = commands[args.command](args, out=out, err=err)
    return Result(code, out.getvalue(), err.getvalue())


def vms_on(cluster: SimCluster, node: str) -> list[str]:
    return sorted(
        f"{vm['metadata']['namespace']}/{vm['metadata']['name']}"
        for vm in cluster.kube.store.list("virtualmachines")["items"]
        if (vm.get("status") or {}).get("nodeName") == node
    )


def test_a_manual_fence_warns_records_and_history_tells_it(make_cluster: Make) -> None:
    cluster = make_cluster(
        nodes=3, bmcs=True, vms=6, brokers=1, agents=False, kubelet_lease_interval=1.0
    )
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    inventory = ["-i", str(cluster.settings.inventory)]
    victim = next(n for n in sorted(cluster.nodes) if vms_on(cluster, n))
    running = vms_on(cluster, victim)
    cluster.wait_for("the victim Ready", lambda: cluster.node_ready(victim), 20)
    run_cli = nodefence

    r = run_cli("fence", victim, *inventory, "--yes", *kube)
    assert r.code == 0, r.out + r.err
    [warning] = [line for line in r.err.splitlines() if line.startswith("WARNING")]
    assert f"{victim} is Ready and not in maintenance" in warning
    assert running[0] in warning and f"maintenance enter {victim}" in warning
    assert "recorded as FenceOperation nodefence/fence-" in r.err

    again = run_cli("fence", victim, *inventory, "--yes", *kube)
    assert again.code == 0, again.out + again.err
    assert "already OFF: no power-off sent" in again.out
    assert cluster.fleet[victim].off_requests == 1  # the second fence sent nothing

    r = run_cli("history", *kube)
    assert r.code == 0, r.err
    rows = [line for line in r.out.splitlines() if line.startswith("20")]
    assert len(rows) == 2 and all(victim in row and "manual (" in row for row in rows)
    assert "proven off" in rows[0] and "read-back, level 1" in rows[0]
    doc = json.loads((run_cli("history", victim, "-o", "json", *kube)).out)
    assert [d["phase"] for d in doc] == ["Manual", "Manual"]
    assert doc[0]["started"] < doc[1]["started"] and "." in doc[0]["started"]  # milliseconds
    r = run_cli("explain", doc[0]["operation"], *kube)
    assert r.code == 0 and "Manual fence" in r.out and "verify-off -> off" in r.out

    # A power cycle kills what ran there, however fast the power is back.
    other = next(n for n in sorted(cluster.nodes) if n != victim and vms_on(cluster, n))
    hosted = vms_on(cluster, other)
    r = run_cli("fence", other, "-a", "reboot", *inventory, "--yes", *kube)
    assert r.code == 0, r.out + r.err
    assert cluster.fleet[other].power_state() == "on"
    controller = cluster.vm_controller
    assert all(not controller.running_places(*vm.split("/")) for vm in hosted)
    cluster.wait_for(
        f"{other}'s VMs no longer said to run there", lambda: not vms_on(cluster, other), 30
    )


def test_pause_and_resume_write_the_leader_lease_and_say_what_they_do(make_cluster: Make) -> None:
    cluster = make_cluster(nodes=3, brokers=1, agents=False)
    kube = ["--kubeconfig", str(cluster.kubeconfig)]

    def run(*args: str) -> tuple[int, str, str]:
        r = nodefence(*args, *kube)
        return r.code, r.out, r.err

    code, _, err = run("pause", "--reason", "BMC firmware")
    assert code == 2 and "no Lease nodefence/nodefence-leader" in err
    store = cluster.kube.store
    lease = {"metadata": {"name": "nodefence-leader"}, "spec": {"holderIdentity": "node-1_x"}}
    store.create("leases", lease, "nodefence")

    code, out, err = run("pause", "--reason", "BMC  firmware")
    assert code == 0, err
    assert "fencing paused by" in out and "BMC firmware" in out and "node-1_x" in out
    stored = store.get("leases", "nodefence-leader", "nodefence")["metadata"]["annotations"]
    pause = Pause.parse(stored[PAUSE_ANNOTATION])
    assert pause is not None and pause.reason == "BMC firmware" and "@" in pause.by

    code, out, _ = run("resume")
    assert code == 0 and "fencing resumed (it was paused by" in out
    stored = store.get("leases", "nodefence-leader", "nodefence")["metadata"]
    assert PAUSE_ANNOTATION not in (stored.get("annotations") or {})
    code, out, _ = run("resume")
    assert code == 0 and "was not paused" in out
    code, _, err = run("pause", "--reason", "  ")
    assert code == 2 and "--reason must say why" in err


async def test_a_pause_the_account_may_not_write_says_whose_kubeconfig_to_use() -> None:
    # `kubectl exec ds/nodefence-agent -- nodefence pause`: the agents' account may only get
    # and update the Lease, not patch it.
    from nodefence.agent.cli.pause import switch
    from nodefence.agent.kube.client import ClusterError, LeaseInfo

    class Refusing:
        async def get_lease(self, namespace: str, name: str) -> LeaseInfo:
            return LeaseInfo(name, namespace, "node-1_x", None, None, 5, 0, "7")

        async def annotate_lease(self, *args: object) -> None:
            raise ClusterError("annotate lease nodefence/nodefence-leader: Forbidden", 403)

    out, err = io.StringIO(), io.StringIO()
    pause = Pause("BMC firmware", "me", "2026-01-01T00:00:00Z")
    code = await switch(Refusing(), "nodefence", "nodefence-leader", pause, out, err)  # type: ignore[arg-type]
    assert code == 1 and "may not change the Lease nodefence/nodefence-leader" in err.getvalue()
    assert "--kubeconfig" in err.getvalue() and "agent pod" in err.getvalue()
