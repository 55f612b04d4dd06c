"""Scenario `bmc-password`: a worker's BMC password changes, then the worker loses power.

The promise: a NodeCannotBeFenced alert within a check interval; the fence fails and `nodefence
status` says so (exit 1, the failing operation, its error, the VMs down); once the password is
fixed the node is fenced, and status is clear after.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nodefence.hwsim.scenarios.failures import phase_of, pick_victims, records_of
from nodefence.hwsim.scenarios.watch import Timeline
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views


def _bmc_status(cluster: SimCluster, node: str) -> tuple[int, str]:
    """`nodefence status` as an operator runs it (with `node`'s agent config): exit code, text."""
    import os
    import subprocess

    from nodefence.hwsim.simnode import REPO

    config = cluster.workdir / "agents" / f"{node}.yaml"
    command = [sys.executable, "-m", "nodefence.agent.cli.main", "status", "--config", str(config)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return done.returncode, done.stdout + done.stderr


def _status_row(cluster: SimCluster, asking: str, node: str) -> str:
    lines = _bmc_status(cluster, asking)[1].splitlines()
    return next((line for line in lines if line.split(" ", 1)[0] == node), "")


def _vms_on(cluster: SimCluster, node: str) -> list[str]:
    return sorted(vm.name for vm in vm_views(cluster.kube.store) if vm.node == node and vm.restarts)


def inject(cluster: SimCluster, tl: Timeline) -> list[str]:
    """A worker's BMC password is changed on the BMC: alert, "cannot be fenced". Then the
    worker loses power: its fence fails (the BMC refuses the credentials) and `nodefence
    status` must say so, with the VMs down, and exit 1. The operator puts the new password in
    the node's password file (a rotated Secret): the next attempt fences it, status is clear."""
    import secrets

    import yaml

    victim = next(n for n in pick_victims(cluster, 4) if _vms_on(cluster, n))
    asking = str(cluster.leader())
    assert cluster.bmcs is not None and cluster.settings.inventory is not None
    inventory = Path(cluster.settings.inventory)
    # The victim gets its own password file (same password): the inventory reloads.
    own = inventory.parent / f"bmc-password-{victim}"
    own.write_text((inventory.parent / "bmc-password").read_text())
    doc = yaml.safe_load(inventory.read_text())
    for level in doc["nodes"][victim]["levels"]:
        for dev in level["devices"]:
            dev["password_file"] = own.name
    staged = inventory.with_name(inventory.name + ".new")  # whole, as a Secret update lands
    staged.write_text(yaml.safe_dump(doc, sort_keys=False))
    staged.replace(inventory)
    new = secrets.token_urlsafe(12)
    tl.add(victim, "BMC PASSWORD CHANGED on the BMC (the inventory still has the old one)")
    changed = time.monotonic()
    cluster.bmcs.set_password(victim, new)
    found = []

    def alerted() -> bool:
        return any(e["involvedObject"]["name"] == victim for e in cluster.events(_UNFENCEABLE))

    try:
        cluster.wait_for("the NodeCannotBeFenced alert", alerted, 3 * CHECK_INTERVAL + 10)
    except TimeoutError:
        found.append(f"no {_UNFENCEABLE} alert for {victim}")
    else:
        found.append(f"alert after {time.monotonic() - changed:.1f} s")
        # `status` prints the leader's view, published once a second: the Event can be first.
        shown_by = time.monotonic() + 5.0
        while True:
            row = _status_row(cluster, asking, victim)
            if "CANNOT BE FENCED" in row or time.monotonic() >= shown_by:
                break
            time.sleep(0.3)
        tl.add(victim, f"nodefence status: {row}")
        found.append(f"status while broken: {row}")
    down = _vms_on(cluster, victim)
    tl.add(victim, "POWER LOSS (machine off; BMC on standby power, wrong password)")
    tl.failure()
    cluster.fleet[victim].cut_power()
    from nodefence.hwsim.liveview import LeaderViewFeed

    feed = LeaderViewFeed(cluster, "bmc-password")
    feed.start()

    def failing_in_the_view() -> bool:  # what `status` prints: the leader's view, not the record
        ops = feed.view.get("operations") or []
        return any(o.get("node") == victim and o.get("phase") == "FenceFailed" for o in ops)

    try:
        cluster.wait_for("the failing fence in the leader's view", failing_in_the_view, 30)
    except TimeoutError:
        found.append(f"no FenceFailed for {victim} (phase {phase_of(cluster, victim)!r})")
    else:
        code, said, missing = _status_failing(cluster, asking, victim, down)
        tl.add(victim, f"nodefence status exit {code} while the fence fails:")
        for line in said:
            tl.add(victim, f"  {line.strip()}")
        found.append(f"failing status exit {code}")
        found += [f"no {what} in status while the fence fails" for what in missing]
    finally:
        feed.stop()
    tl.add(victim, "PASSWORD FIXED: the new one written to the node's password file")
    own.write_text(new + "\n")
    (cluster.workdir / "bmc-password.txt").write_text("\n".join(found) + "\n")
    return [victim]


def _status_failing(
    cluster: SimCluster, asking: str, node: str, down: list[str]
) -> tuple[int, list[str], list[str]]:
    """`nodefence status` while `node`'s fence fails: its exit code, its NEEDS ATTENTION
    lines, and what it failed to say (the failing operation, its error, each VM down)."""
    code, text = _bmc_status(cluster, asking)
    lines = text.splitlines()
    said = lines[next((i for i, x in enumerate(lines) if x.startswith("NEEDS")), len(lines)) :]
    missing = []
    if f"{node}: fencing failed" not in text:
        missing.append(f"'{node}: fencing failed'")
    if "credentials" not in text and "auth" not in text:
        missing.append("BMC error")
    missing += [vm for vm in down if vm not in text]
    return code, said, missing


_UNFENCEABLE = "NodeCannotBeFenced"
CHECK_INTERVAL = 2.0


def judge(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    lines = (cluster.workdir / "bmc-password.txt").read_text().splitlines()
    problems = [line for line in lines if line.startswith("no ")]
    took = [float(line.split()[2]) for line in lines if line.startswith("alert after")]
    if took and took[0] > 3 * CHECK_INTERVAL + 10:  # the wait's own bound (a loaded machine)
        problems.append(f"the alert took {took[0]:.1f} s, more than one check interval")
    broken = [line for line in lines if line.startswith("status while broken")]
    if broken and "CANNOT BE FENCED" not in broken[0]:
        problems.append(f"nodefence status did not say {v} cannot be fenced: {broken[0]}")
    if "failing status exit 1" not in lines:
        problems.append(f"nodefence status did not exit 1 while the fence failed: {lines}")
    if not any(e["involvedObject"]["name"] == v for e in cluster.events("BmcCheckFailed")):
        problems.append(f"no BmcCheckFailed Event about {v}")
    if phase_of(cluster, v) not in ("Recovered", "RecoveryIncomplete"):
        problems.append(f"fixing the password did not fence {v}: {phase_of(cluster, v)}")
    else:
        # The BMC checks pass again within a check interval of the fix (the fence may be
        # over before): status is asked until it is clear, at most a few intervals.
        deadline = time.monotonic() + 3 * CHECK_INTERVAL + 10
        while True:
            code, text = _bmc_status(cluster, str(cluster.leader()))
            needs = [line for line in text.splitlines() if line.startswith("  - ")]
            still = "fencing failed" in text or "CANNOT BE FENCED" in text
            exits = code != 0 and not all("left stopped" in line for line in needs)
            if not (still or exits) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if still:
            problems.append(f"nodefence status after the fix still says it: {text}")
        if exits:
            problems.append(f"nodefence status after the fix exits {code}: {text}")
    problems += [f"{n} was fenced" for n in cluster.nodes if n != v and records_of(cluster, n)]
    return problems
