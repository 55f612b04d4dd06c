"""`nodefence fence` and `nodefence bmc check` as processes, against emulated BMCs over real
UDP (IPMI) and HTTPS (Redfish) on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nodefence.hwsim.tls import make_tls
from tests.conftest import RunningFleet, run_cli


async def test_fence_off_is_proven_by_level_one_and_exits_zero(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-2", "-i", str(bmc_fleet.inventory), "--yes")
    assert r.code == 0, r.out + r.err
    assert "proven OFF by level 1" in r.out
    assert "level 1  ipmi" in r.out and "verify-off" in r.out
    assert "confirm-off" in r.out  # the Redfish channel was read too
    assert bmc_fleet.fleet["node-2"].power_state() == "off"
    assert bmc_fleet.fleet["node-1"].power_state() == "on"


async def test_status_prints_the_power_state_and_changes_nothing(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "-a", "status")
    assert r.code == 0 and "power on" in r.out
    assert bmc_fleet.fleet["node-1"].power_changes == 0


async def test_dry_run_reads_but_never_powers_off(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "--dry-run")
    assert r.code == 0 and "dry run" in r.out
    assert bmc_fleet.fleet["node-1"].power_state() == "on"


async def test_destructive_action_without_a_terminal_needs_yes(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory))
    assert r.code == 2 and "without --yes" in r.err
    assert bmc_fleet.fleet["node-1"].power_changes == 0


async def test_stuck_on_node_exits_nonzero_with_verify_failure(bmc_fleet: RunningFleet) -> None:
    bmc_fleet.fleet["node-3"].set_faults(ignore_off=True)
    r = await run_cli("fence", "node-3", "-i", str(bmc_fleet.inventory), "--yes")
    assert r.code == 1
    assert "FAILED to off" in r.out and "not confirmed within power_timeout" in r.out


async def test_dead_ipmi_channel_escalates_to_redfish(bmc_fleet: RunningFleet) -> None:
    await bmc_fleet.bmcs.ipmi_bmcs["node-1"].stop()
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "--yes")
    assert r.code == 0, r.out
    assert "proven OFF by level 2" in r.out
    assert bmc_fleet.fleet["node-1"].power_state() == "off"


async def test_reboot_ends_on_after_a_proven_off(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "-a", "reboot", "-y")
    assert r.code == 0, r.out
    assert "rebooted" in r.out
    assert bmc_fleet.fleet["node-1"].power_changes == 2
    assert bmc_fleet.fleet["node-1"].power_state() == "on"


async def test_json_output_carries_steps_and_verdict(bmc_fleet: RunningFleet) -> None:
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "-y", "-o", "json")
    doc = json.loads(r.out)
    assert doc["success"] and doc["offProven"] and doc["level"] == 1
    assert {s["request"] for s in doc["steps"]} >= {"off", "verify-off", "confirm-off"}


async def test_unknown_node_is_a_usage_error_naming_the_known_ones(
    bmc_fleet: RunningFleet,
) -> None:
    r = await run_cli("fence", "node-9", "-i", str(bmc_fleet.inventory), "-y")
    assert r.code == 2 and "node-9" in r.err and "node-1, node-2, node-3" in r.err


async def test_broken_inventory_is_a_usage_error_and_touches_nothing(
    bmc_fleet: RunningFleet, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(bmc_fleet.inventory.read_text().replace("cipher: 17", "cipher: 99", 1))
    r = await run_cli("fence", "node-1", "-i", str(broken), "-y")
    assert r.code == 2 and "field 'cipher'" in r.err and "node 'node-1'" in r.err
    assert all(m.power_changes == 0 for m in bmc_fleet.fleet)


async def test_bmc_check_lists_every_device_and_fails_on_a_bad_one(
    bmc_fleet: RunningFleet,
) -> None:
    r = await run_cli("bmc", "check", "-i", str(bmc_fleet.inventory))
    assert r.code == 0, r.out
    assert r.out.count(" yes ") >= 6 and "6 devices checked, 0 failing" in r.out
    bmc_fleet.fleet["node-2"].set_faults(wrong_credentials=True)
    r = await run_cli("bmc", "check", "-i", str(bmc_fleet.inventory), "node-2")
    assert r.code == 1 and "2 devices checked, 2 failing" in r.out


async def test_no_output_ever_contains_the_bmc_password(bmc_fleet: RunningFleet) -> None:
    password = bmc_fleet.bmcs.password
    bmc_fleet.fleet["node-3"].set_faults(wrong_credentials=True)
    runs = [
        await run_cli("fence", "node-3", "-i", str(bmc_fleet.inventory), "-y"),
        await run_cli("bmc", "check", "-i", str(bmc_fleet.inventory)),
        await run_cli("fence", "--help"),
    ]
    for r in runs:
        assert password not in r.out and password not in r.err


async def test_fence_output_says_a_channel_was_skipped_because_it_did_not_answer(
    bmc_fleet: RunningFleet,
) -> None:
    await bmc_fleet.bmcs.redfish_bmcs["node-1"].stop()
    r = await run_cli("fence", "node-1", "-i", str(bmc_fleet.inventory), "--yes")
    assert r.code == 0, r.out
    assert "proven OFF by level 1" in r.out
    (line,) = [ln for ln in r.out.splitlines() if "redfish" in ln and "confirm-off" in ln]
    assert "unreachable  (skipped: no answer at all cannot contradict the proof" in line


async def test_a_channel_failing_tls_is_no_proof_and_bmc_check_says_what_to_fix(
    bmc_fleet: RunningFleet, tmp_path: Path
) -> None:
    # node-1's Redfish BMC is verified against a CA that did not sign its certificate.
    doc = yaml.safe_load(bmc_fleet.inventory.read_text())
    stranger = make_tls(tmp_path / "stranger")
    doc["nodes"]["node-1"]["levels"][1]["devices"][0]["ca_file"] = str(stranger.ca_cert)
    wrong_ca = tmp_path / "wrong-ca.yaml"
    wrong_ca.write_text(yaml.safe_dump(doc))

    r = await run_cli("fence", "node-1", "-i", str(wrong_ca), "--yes")
    assert r.code == 1, r.out
    assert bmc_fleet.fleet["node-1"].power_state() == "off"  # ipmi switched it, but...
    (line,) = [ln for ln in r.out.splitlines() if "redfish" in ln and "confirm-off" in ln]
    assert " tls  (answered with an error: must read Off within power_timeout" in line
    verdict = r.out.splitlines()[-1]
    assert verdict.startswith("node node-1: FAILED to off: level 1 read Off, but")
    assert "channel_errors" in verdict and "device=redfish" in verdict

    r = await run_cli("bmc", "check", "-i", str(wrong_ca), "node-1")
    assert r.code == 1
    (row,) = [ln for ln in r.out.splitlines() if ln.startswith("node-1") and "redfish" in ln]
    assert row.split()[5:7] == ["yes", "NO"]  # reachable: it answered; no trusted channel
    assert "TLS: the BMC's certificate is not trusted by ca_file" in r.out
