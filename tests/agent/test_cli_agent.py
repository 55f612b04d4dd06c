"""`nodefence agent` and `nodefence status` as processes: bad input is refused clearly."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli
from tests.support.brokers import running_broker


def config_file(tmp_path: Path, text: str) -> Path:
    """`agent.yaml` in `tmp_path`, holding `text`."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(text)
    return cfg


async def test_agent_with_a_broken_config_names_file_and_field(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "broker: {port: nope}\n")
    r = await run_cli("agent", "-c", str(cfg), "--node", "node-1")
    assert r.code == 2 and str(cfg) in r.err and "broker.port" in r.err


async def test_agent_without_a_node_name_refuses_to_start(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "{}\n")
    r = await run_cli("agent", "-c", str(cfg), "--node", "Bad_Name")
    assert r.code == 2 and "--node or $NODE_NAME" in r.err


async def test_a_fencer_with_a_broken_inventory_refuses_to_start(tmp_path: Path) -> None:
    # Only the fencers read the inventory (a node agent holds no BMC credentials).
    (tmp_path / "inv.yaml").write_text("nodes: {}\n")
    cfg = config_file(tmp_path, "inventory: inv.yaml\n")
    r = await run_cli("fencer", "-c", str(cfg), "--node", "node-1")
    assert r.code == 2 and "inventory error" in r.err and "inv.yaml" in r.err


async def test_a_fencer_with_a_bad_node_name_says_so_on_stderr(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "{}\n")
    r = await run_cli("fencer", "-c", str(cfg), "--node", "Bad_Name")
    assert r.code == 2 and "fencer's node" in r.err


async def test_agent_with_a_bad_profile_override_names_it(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "detection: {overrides: {fence_aftr: 3}}\n")
    r = await run_cli("agent", "-c", str(cfg), "--node", "node-1")
    assert r.code == 2 and "fence_aftr" in r.err


async def test_status_without_a_leader_says_so_and_fails(tmp_path: Path) -> None:
    with running_broker(tmp_path / "mqtt") as broker:
        cfg = config_file(tmp_path, f"broker: {{port: {broker.port}}}\n")
        r = await run_cli("status", "-c", str(cfg), "--wait", "0.5")
    assert r.code == 1 and "no leader view" in r.err


async def test_status_with_no_broker_reports_it(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "broker: {port: 1}\n")
    r = await run_cli("status", "-c", str(cfg), "--wait", "0.5")
    assert r.code == 1 and "cannot reach any broker (127.0.0.1:1)" in r.err


async def test_agent_with_watchdog_on_and_no_device_refuses_to_start(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, f"watchdog: {{enabled: true, device: {tmp_path}/watchdog}}\n")
    r = await run_cli("agent", "-c", str(cfg), "--node", "node-1")
    assert r.code == 2 and "watchdog.device" in r.err and f"{tmp_path}/watchdog" in r.err


async def test_agent_with_a_short_heartbeat_key_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("too-short\n")
    cfg = config_file(tmp_path, "auth: {heartbeat_key_file: key}\n")
    r = await run_cli("agent", "-c", str(cfg), "--node", "node-1")
    assert r.code == 2 and "auth.heartbeat_key_file" in r.err and "32 bytes" in r.err
    assert "too-short" not in r.err + r.out  # the key itself is never printed
