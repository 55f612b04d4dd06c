"""`type: fence_agent` devices: ClusterLabs fence agents run through their stdin protocol.

Against hwsim's BMCs with Debian's fence-agents (fence_ipmilan over ipmitool, fence_redfish
over HTTPS with the run's CA), and against small agents written here that break the agent
API on purpose (an `off` that lies, a `status` whose exit code disagrees with its text).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from nodefence.agent.config.inventory_file import (
    FencingPolicy,
    InventoryError,
    Level,
    NodeInventory,
    load_inventory,
)
from nodefence.agent.fencing.power_executor import PowerFencer
from nodefence.agent.fencing.topology import PowerRequest
from nodefence.backends.base import PowerState
from nodefence.backends.errors import FenceAgentFailed, FenceError
from nodefence.backends.fence_agent import AgentRun, FenceAgentBackend, agent_input, read_status
from nodefence.backends.spec import DeviceTimeouts, FenceAgentDevice, Secret
from tests.conftest import RunningFleet, run_cli

HAVE_AGENTS = all(
    shutil.which(a, path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    for a in ("fence_ipmilan", "fence_redfish")
)
# In CI the agents must be there (scripts/install installs fence-agents): never skipped there.
needs_fence_agents = [
    pytest.mark.fence_agents,
    pytest.mark.skipif(
        not HAVE_AGENTS and os.environ.get("CI") != "true",
        reason="needs Debian's fence-agents (scripts/install installs it)",
    ),
]


def agent_inventory(running: RunningFleet, **defaults: object) -> Path:
    """The fleet's inventory with every device behind a fence agent."""
    path = running.bmcs.write_inventory(running.inventory, fence_agents=True)
    doc = yaml.safe_load(path.read_text())
    doc["defaults"] |= defaults
    path.write_text(yaml.safe_dump(doc))
    return path


@needs_fence_agents[0]
@needs_fence_agents[1]
async def test_fence_through_fence_ipmilan_and_fence_redfish_is_proven_by_their_status(
    bmc_fleet: RunningFleet,
) -> None:
    inventory = agent_inventory(bmc_fleet)
    r = await run_cli("fence", "node-2", "-i", str(inventory), "--yes", "-o", "json")
    assert r.code == 0, r.out + r.err
    out = json.loads(r.out)
    assert out["offProven"] is True and out["level"] == 1
    steps = [(s["device"], s["request"], s["result"]) for s in out["steps"]]
    assert steps == [
        ("ipmi-agent", "off", "sent"),
        ("ipmi-agent", "verify-off", "off"),  # fence_ipmilan's own status read-back
        ("redfish-agent", "confirm-off", "off"),  # and fence_redfish's, the other channel
    ]
    assert bmc_fleet.fleet["node-2"].power_state() == "off"
    assert bmc_fleet.fleet["node-1"].power_state() == "on"


@needs_fence_agents[0]
@needs_fence_agents[1]
async def test_an_ignore_off_bmc_behind_a_fence_agent_is_reported_not_proven(
    bmc_fleet: RunningFleet,
) -> None:
    bmc_fleet.fleet["node-3"].set_faults(ignore_off=True)
    inventory = agent_inventory(bmc_fleet, power_timeout=1)
    doc = yaml.safe_load(inventory.read_text())
    doc["fencing"]["attempts"] = 1
    inventory.write_text(yaml.safe_dump(doc))
    r = await run_cli("fence", "node-3", "-i", str(inventory), "--yes")
    assert r.code == 1, r.out + r.err
    assert "FAILED to off" in r.out and "Off NOT proven" in r.out
    assert "agent_failed" in r.out
    assert bmc_fleet.fleet["node-3"].power_state() == "on"


@needs_fence_agents[0]
@needs_fence_agents[1]
async def test_bmc_check_through_fence_agents_reads_power_and_never_claims_reachable_on_failure(
    bmc_fleet: RunningFleet,
) -> None:
    inventory = agent_inventory(bmc_fleet)
    bmc_fleet.fleet["node-1"].set_faults(wrong_credentials=True)
    r = await run_cli("bmc", "check", "node-1", "node-2", "-i", str(inventory), "-o", "json")
    rows = {(d["node"], d["device"]): d for d in json.loads(r.out)["devices"]}
    assert r.code == 1
    assert rows["node-2", "ipmi-agent"]["power"] == "on" and rows["node-2", "ipmi-agent"]["auth"]
    bad = rows["node-1", "ipmi-agent"]
    # An agent cannot tell silence from refusal: neither "reachable" nor "unreachable".
    assert bad["reason"] == "agent_failed" and not bad["auth"]
    assert bad["power"] == "unknown"


@needs_fence_agents[0]
@needs_fence_agents[1]
async def test_an_option_the_agent_does_not_know_is_an_error_naming_it(
    bmc_fleet: RunningFleet,
) -> None:
    inventory = agent_inventory(bmc_fleet)
    doc = yaml.safe_load(inventory.read_text())
    doc["nodes"]["node-1"]["levels"][0]["devices"][0]["options"]["cipherr"] = 17
    inventory.write_text(yaml.safe_dump(doc))
    spec = load_inventory(inventory).node("node-1").levels[0].devices[0]
    with pytest.raises(FenceAgentFailed, match="does not know the option 'cipherr'"):
        await FenceAgentBackend("node-1", spec).power_state()  # type: ignore[arg-type]


# --- agents that break the agent API, written here -----------------------------------------


def fake_agent(tmp_path: Path, body: str) -> str:
    """A fence agent in Python: `body` sees `opts` (its stdin options) and may print/exit."""
    path = tmp_path / "fence_fake"
    path.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "opts = dict(l.rstrip('\\n').split('=', 1) for l in sys.stdin if '=' in l)\n" + body
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def fake_device(agent: str, **fields: object) -> FenceAgentDevice:
    fields.setdefault("timeouts", DeviceTimeouts(timeout=5.0, power_timeout=0.6, poll_interval=0.1))
    return FenceAgentDevice("fake", agent, **fields)  # type: ignore[arg-type]


async def test_an_off_that_exits_zero_is_no_proof_when_status_still_reads_on(
    tmp_path: Path,
) -> None:
    lying = fake_agent(
        tmp_path,
        "if opts['action'] == 'off': sys.exit(0)\n"  # "done!", but nothing happened
        "print('Status: ON'); sys.exit(0)\n",
    )
    node = NodeInventory("node-1", (Level((fake_device(lying),)),))
    outcome = await PowerFencer(node, FencingPolicy(attempts=1)).run(PowerRequest.OFF)
    assert not outcome.off_proven and not outcome.success
    assert [(s.request, s.result) for s in outcome.steps] == [
        ("off", "sent"),
        ("verify-off", "verify_failed"),
    ]


@pytest.mark.parametrize(
    ("stdout", "code", "state"),
    [
        ("Status: OFF\n", 2, PowerState.OFF),
        ("Status: ON\n", 0, PowerState.ON),
        ("Status: OFF\n", 0, None),  # text and exit status disagree: unknown, never Off
        ("Status: ON\n", 2, None),
        ("", 2, None),  # an exit status alone proves nothing
        ("Status: OFF\nStatus: ON\n", 2, None),
        ("Status: OFFLINE\n", 2, None),
    ],
)
def test_only_status_off_with_exit_two_reads_off(
    stdout: str, code: int, state: PowerState | None
) -> None:
    assert read_status(AgentRun(code, stdout, "")) is state


async def test_a_status_whose_exit_code_disagrees_is_an_error_not_a_state(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "print('Status: OFF'); sys.exit(0)\n")
    with pytest.raises(FenceAgentFailed, match="disagree"):
        await FenceAgentBackend("node-1", fake_device(agent)).power_state()


async def test_the_password_reaches_the_agent_on_stdin_only(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    agent = fake_agent(
        tmp_path,
        f"json.dump({{'argv': sys.argv, 'env': dict(os.environ), 'opts': opts}}, "
        f"open({str(seen)!r}, 'w'))\nprint('Status: ON')\n",
    )
    spec = fake_device(
        agent,
        address="10.0.0.9",
        port=6230,
        username="fencer",
        password=Secret("s3cret-on-stdin"),
        options=(("plug", "4"),),
    )
    os.environ["NODEFENCE_TEST_SECRET"] = "not-for-agents"
    try:
        assert await FenceAgentBackend("node-1", spec).power_state() is PowerState.ON
    finally:
        del os.environ["NODEFENCE_TEST_SECRET"]
    got = json.loads(seen.read_text())
    assert got["opts"]["password"] == "s3cret-on-stdin"
    assert got["opts"] | {"password": "-"} == {
        "action": "status",
        "ip": "10.0.0.9",
        "ipport": "6230",
        "username": "fencer",
        "power_timeout": "1",
        "power_wait": "0",
        "plug": "4",
        "password": "-",
    }
    assert "s3cret-on-stdin" not in " ".join(got["argv"])
    assert "s3cret-on-stdin" not in json.dumps(got["env"])
    assert "NODEFENCE_TEST_SECRET" not in got["env"]  # the agent gets none of our environment


async def test_an_agent_that_hangs_is_killed_at_its_deadline(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "import time\ntime.sleep(30)\n")
    spec = fake_device(agent, timeouts=DeviceTimeouts(timeout=0.5))
    with pytest.raises(FenceError, match=r"no result within 0\.5 s"):
        await FenceAgentBackend("node-1", spec).power_state()


def test_the_agent_input_never_repeats_an_option_and_the_inventory_options_win() -> None:
    spec = fake_device("/bin/true", options=(("power_timeout", "30"),), password=Secret("pw"))
    lines = agent_input(spec, "off").splitlines()
    names = [line.split("=", 1)[0] for line in lines]
    assert len(names) == len(set(names))
    assert "power_timeout=30" in lines and lines[0] == "action=off"


# --- the inventory ---------------------------------------------------------------------------


def write_inventory(tmp_path: Path, device: dict[str, object]) -> Path:
    (tmp_path / "pw").write_text("pw\n")
    doc = {"nodes": {"n1": {"levels": [{"devices": [{"name": "d", **device}]}]}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ({"agent": "fence_no_such_agent"}, "fence_no_such_agent is not installed"),
        ({"agent": "rm -rf"}, "is not a fence agent name"),
        ({"agent": "/bin/true", "options": {"password": "x"}}, "use password_file"),
        ({"agent": "/bin/true", "options": {"passwd_script": "x"}}, "use password_file"),
        ({"agent": "/bin/true", "options": {"action": "on"}}, "chosen by nodefence"),
        ({"agent": "/bin/true", "options": {"ip": "x"}}, "use the field 'address'"),
        ({"agent": "/bin/true", "options": {"plug": "1\naction=on"}}, "single line"),
        ({"agent": "/bin/true", "options": {"plug": [1]}}, "string, number or boolean"),
        ({"agent": "/bin/true", "options": ["plug"]}, "mapping of agent options"),
        ({"agent": "/bin/true", "password": "x"}, "inline passwords"),
    ],
)
def test_a_bad_fence_agent_device_names_its_field(
    tmp_path: Path, device: dict[str, object], problem: str
) -> None:
    with pytest.raises(InventoryError, match=problem) as caught:
        load_inventory(write_inventory(tmp_path, {"type": "fence_agent", **device}))
    assert "node 'n1', level 1, device 1 (fence_agent)" in str(caught.value)


def test_a_fence_agent_device_is_loaded_with_its_options_and_password(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        {
            "type": "fence_agent",
            "agent": "/bin/true",
            "password_file": "pw",
            "options": {"lanplus": True, "cipher": 17, "plug-separator": ","},
        },
    )
    dev = load_inventory(path).node("n1").levels[0].devices[0]
    assert isinstance(dev, FenceAgentDevice)
    assert dict(dev.options) == {"lanplus": "1", "cipher": "17", "plug_separator": ","}
    assert dev.password == Secret("pw") and dev.address is None


@needs_fence_agents[0]
@needs_fence_agents[1]
def test_the_shipped_fence_agent_example_inventory_is_valid(tmp_path: Path) -> None:
    if shutil.which("fence_apc_snmp", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None:
        pytest.fail("fence_apc_snmp is part of fence-agents: the package is incomplete")
    example = Path(__file__).resolve().parents[2] / "examples" / "inventory-fence-agents.yaml"
    text = example.read_text().replace("/etc/nodefence/secrets/", str(tmp_path) + "/")
    for name in ("worker-4-bmc", "pdu-community", "bmc-ca.pem"):
        (tmp_path / name).write_text("pw\n")
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    inv = load_inventory(path)
    ipmilan = inv.node("worker-4").levels[0].devices[0]
    assert isinstance(ipmilan, FenceAgentDevice)
    assert dict(ipmilan.options) == {"lanplus": "1", "cipher": "17", "privlvl": "operator"}
    assert ipmilan.agent.endswith("/fence_ipmilan") and ipmilan.port == 623
