"""Time to a proven Off against emulated BMCs, ours beside Pacemaker's reference agents.

    python bench/fence_latency.py [--runs 20] [--smoke]

Needs Debian's `fence-agents` (fence_ipmilan, fence_redfish) and `ipmitool`. Everything runs
on 127.0.0.1 in this one run, so the ratios compare like with like:

(a) our backend inside a running process (what the leader pays: login, power-off request,
    read-back until Off) vs the reference agent with its wait disabled (--power-wait=0);
    target: at most 0.5x. Our IPMI backend runs pyghmi in a worker process started ahead
    (a spare); between fences the bench lets the spares load, as the time between two real
    fences does. A second IPMI line shows a fence with no spare ready (the worker starts on
    the fence's first call).
(b) the whole `nodefence fence NODE --yes` process vs the reference agent with its defaults;
    target: at most 1x.

`--smoke` is a quick check that everything runs (3 runs each; without fence-agents it
measures ours only and prints no ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nodefence.agent.config.inventory_file import FencingPolicy, Level, NodeInventory  # noqa: E402
from nodefence.agent.fencing.power_executor import PowerFencer  # noqa: E402
from nodefence.agent.fencing.topology import PowerRequest  # noqa: E402
from nodefence.backends.base import PowerBackend  # noqa: E402
from nodefence.backends.ipmi.backend import IpmiBackend  # noqa: E402
from nodefence.backends.ipmi.pool import POOL, WorkerPool  # noqa: E402
from nodefence.backends.registry import build_backend  # noqa: E402
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, RedfishDevice, Secret  # noqa: E402
from nodefence.hwsim.fleet import Fleet  # noqa: E402
from nodefence.hwsim.ipmi import IpmiBmc  # noqa: E402
from nodefence.hwsim.redfish import RedfishBmc  # noqa: E402
from nodefence.hwsim.tls import make_tls  # noqa: E402

USER, PASSWORD = "admin", "bench-Pa55word"


class EmulatorThread:
    """Runs the emulators in their own event loop so blocking clients can use them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Series:
    name: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def measure(name: str, runs: int, once: Callable[[], None], reset: Callable[[], None]) -> Series:
    samples = []
    for _ in range(runs):
        reset()
        start = time.perf_counter()
        once()
        samples.append(time.perf_counter() - start)
    return Series(name, samples)


def fence_agent(agent: str, options: dict[str, str], env: dict[str, str] | None = None) -> None:
    """Run a fence-agents program with options on stdin (keeps the password off argv)."""
    text = "".join(f"{k}={v}\n" for k, v in options.items())
    r = subprocess.run([agent], input=text, capture_output=True, text=True, env=env, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{agent} failed ({r.returncode}): {r.stderr.strip()[-300:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="3 runs each; references optional")
    args = parser.parse_args()
    runs = 3 if args.smoke else args.runs
    missing = [
        t
        for t in ("fence_ipmilan", "fence_redfish", "ipmitool")
        if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()
    ]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install fence-agents ipmitool")
        if not args.smoke:
            return 2
    ipmilan = shutil.which("fence_ipmilan") or "/usr/sbin/fence_ipmilan"
    redfish_agent = shutil.which("fence_redfish") or "/usr/sbin/fence_redfish"
    references = not missing

    work = Path(tempfile.mkdtemp(prefix="nodefence-bench-"))
    fleet = Fleet.of_size(2)
    tls = make_tls(work / "tls")
    emu = EmulatorThread()
    ipmi = IpmiBmc(fleet["node-1"], USER, PASSWORD)
    rf = RedfishBmc([fleet["node-2"]], USER, PASSWORD, tls=tls)
    emu.run(ipmi.start())
    emu.run(rf.start())
    try:
        return run_all(
            runs,
            work,
            fleet,
            ipmi.port,
            rf.port,
            tls.ca_cert,
            ipmilan if references else None,
            redfish_agent if references else None,
        )
    finally:
        emu.run(ipmi.stop())
        emu.run(rf.stop())
        emu.close()
        shutil.rmtree(work, ignore_errors=True)


def run_all(
    runs: int,
    work: Path,
    fleet: Fleet,
    ipmi_port: int,
    rf_port: int,
    ca: Path,
    ipmilan: str | None,
    redfish_agent: str | None,
) -> int:
    timeouts = DeviceTimeouts(timeout=5, power_timeout=20, poll_interval=0.05)
    ipmi_spec = IpmiDevice(
        "ipmi", "127.0.0.1", USER, Secret(PASSWORD), port=ipmi_port, cipher=3, timeouts=timeouts
    )
    rf_spec = RedfishDevice(
        "redfish",
        "127.0.0.1",
        USER,
        Secret(PASSWORD),
        port=rf_port,
        ca_file=str(ca),
        timeouts=timeouts,
    )
    policy = FencingPolicy(attempts=1, verify_all_channels=False)

    def ours(
        node: str,
        spec: IpmiDevice | RedfishDevice,
        factory: Callable[[str, IpmiDevice | RedfishDevice], PowerBackend] = build_backend,
    ) -> Callable[[], None]:
        inv = NodeInventory(node, (Level((spec,)),))

        def once() -> None:
            out = asyncio.run(PowerFencer(inv, policy, factory=factory).run(PowerRequest.OFF))
            if not out.success:
                raise RuntimeError(out.reason)

        return once

    def reset(node: str) -> Callable[[], None]:
        return lambda: fleet[node].request_on()

    def reset_warm(node: str) -> Callable[[], None]:
        def again() -> None:
            fleet[node].request_on()
            if not POOL.wait_ready(30):
                raise RuntimeError("IPMI worker processes did not start")

        return again

    no_spares = WorkerPool(spares=0)

    def cold_ipmi(node: str, spec: IpmiDevice | RedfishDevice) -> PowerBackend:
        assert isinstance(spec, IpmiDevice)
        return IpmiBackend(node, spec, pool=no_spares)

    ipmi_opts = {
        "ip": "127.0.0.1",
        "ipport": str(ipmi_port),
        "username": USER,
        "password": PASSWORD,
        "lanplus": "1",
        "cipher": "3",
        "action": "off",
    }
    rf_opts = {
        "ip": "127.0.0.1",
        "ipport": str(rf_port),
        "username": USER,
        "password": PASSWORD,
        "ssl": "1",
        "systems_uri": "/redfish/v1/Systems/node-2",
        "action": "off",
    }
    rf_env = {"REQUESTS_CA_BUNDLE": str(ca), "PATH": "/usr/sbin:/usr/bin:/bin"}

    inventory = work / "inventory.yaml"
    (work / "pw").write_text(PASSWORD + "\n")
    inventory.write_text(
        "nodes:\n  node-1:\n    levels:\n      - devices:\n          - type: ipmi\n"
        f"            address: 127.0.0.1\n            port: {ipmi_port}\n"
        f"            username: {USER}\n            password_file: pw\n"
        "            poll_interval: 0.05\n"
    )
    cli = [
        sys.executable,
        "-m",
        "nodefence.agent.cli.main",
        "fence",
        "node-1",
        "-i",
        str(inventory),
        "--yes",
    ]

    def nodefence_process() -> None:
        r = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(r.stdout[-300:] + r.stderr[-300:])

    series = {
        "ours_ipmi": measure(
            "nodefence IPMI backend, in process",
            runs,
            ours("node-1", ipmi_spec),
            reset_warm("node-1"),
        ),
        "ours_ipmi_cold": measure(
            "  the same, no spare worker ready",
            runs,
            ours("node-1", ipmi_spec, cold_ipmi),
            reset("node-1"),
        ),
        "ours_rf": measure(
            "nodefence Redfish backend, in process", runs, ours("node-2", rf_spec), reset("node-2")
        ),
        "ours_cli": measure(
            "nodefence fence (whole process, IPMI)", runs, nodefence_process, reset("node-1")
        ),
    }
    if ipmilan is not None and redfish_agent is not None:
        series["ref_ipmi"] = measure(
            "fence_ipmilan --power-wait=0",
            runs,
            lambda: fence_agent(ipmilan, {**ipmi_opts, "power_wait": "0"}),
            reset("node-1"),
        )
        series["ref_rf"] = measure(
            "fence_redfish --power-wait=0",
            runs,
            lambda: fence_agent(redfish_agent, {**rf_opts, "power_wait": "0"}, rf_env),
            reset("node-2"),
        )
        series["ref_default"] = measure(
            "fence_ipmilan (defaults)",
            max(3, runs // 4),
            lambda: fence_agent(ipmilan, ipmi_opts),
            reset("node-1"),
        )
    print(f"time to a proven Off, {runs} runs each, all on 127.0.0.1")
    print(f"{'what':<44} {'median':>9} {'p95':>9}")
    for s in series.values():
        print(f"{s.name:<44} {s.median * 1000:8.1f}ms {s.p95 * 1000:8.1f}ms")
    ratios = [
        ("(a) IPMI: ours in process / fence_ipmilan --power-wait=0", "ours_ipmi", "ref_ipmi", 0.5),
        ("(a) Redfish: ours in process / fence_redfish --power-wait=0", "ours_rf", "ref_rf", 0.5),
        ("(b) nodefence fence process / fence_ipmilan defaults", "ours_cli", "ref_default", 1.0),
    ]
    print()
    if "ref_ipmi" not in series:
        print("reference agents not installed: no ratios")
        return 0
    for title, a, b, target in ratios:
        ratio = series[a].median / series[b].median
        verdict = "meets" if ratio <= target else "MISSES"
        print(f"{title:<62} {ratio:6.3f}x  (target <= {target}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
