"""Every `nodefence-hwsim scenario` plays to a PASS verdict on a short-timing cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsim.scenarios import SCENARIOS, run_scenario


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_ends_as_nodefence_promises(name: str, tmp_path: Path) -> None:
    ok, timeline = run_scenario(name, tmp_path / name, nodes=5, vms=10, fast=True, echo=False)
    lines = "\n".join(f"{t:6.2f}s {node} {what}" for t, node, what in timeline.lines)
    assert ok, lines


def test_power_loss_with_cleanup_taint_keeps_the_node_reboots_and_untaints_it(
    tmp_path: Path,
) -> None:
    ok, timeline = run_scenario(
        "power-loss", tmp_path / "taint", nodes=5, vms=10, fast=True, echo=False, cleanup="taint"
    )
    lines = "\n".join(f"{t:6.2f}s {node} {what}" for t, node, what in timeline.lines)
    assert ok, lines
    assert "FenceUntainted" in lines and "Node deleted from the cluster" not in lines


async def test_scenario_command_prints_a_timeline_and_verdict(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    r = await run_cli(
        "scenario",
        "power-loss",
        "--fast",
        "--workdir",
        str(tmp_path / "s"),
        module="hwsim.cli",
        timeout=180,
    )
    assert r.code == 0, r.out + r.err
    assert "POWER LOSS" in r.out and "FencePoweredOff" in r.out
    assert "FenceReleasedPods" in r.out and "detached from" in r.out  # the release, visible
    assert "timers: upstream defaults" in r.out
    assert "verdict: PASS" in r.out
