"""The scenario's timeline chart (hwsim/scenarios/chart.py): power and nodefence's verdict on
separate lanes, a leader lane with its gaps, labelled milestones, a legend of only what is drawn."""

from __future__ import annotations

import re

from nodefence.hwsim.scenarios.chart import Samples, render_svg, vm_state


def lane_titles(svg: str) -> list[str]:
    return re.findall(r'<text x="10" y="\d+">([^<]+)</text>', svg)


def test_power_and_verdict_are_separate_lanes_and_the_leaderless_gap_is_drawn() -> None:
    s = Samples()
    s.holder(0.0, "node-1")
    s.node(0.0, "node-5", "on", "healthy")
    s.node(5.0, "node-5", "off", "healthy")  # the power goes before nodefence knows
    s.node(9.0, "node-5", "off", "dead")
    s.node(9.2, "node-5", "off", "fencing")
    s.holder(10.0, None)
    s.holder(12.0, "node-2")
    s.milestone(9.0, "node-5", "node-5 declared dead")
    s.milestone(5.0, "-", "failure: node-5")
    svg = render_svg(s, 20.0, "t")
    titles = lane_titles(svg)
    assert titles[:3] == ["leader", "node-5 power", "node-5 nodefence"]
    assert "node-5 power: off (5.0-20.0 s)" in svg  # one power segment from the cut to the end
    assert "node-5 nodefence: dead (9.0-9.2 s)" in svg
    assert "leader: no leader (10.0-12.0 s)" in svg
    assert ">node-5 declared dead +4.0s</text>" in svg  # labelled, timed from the failure
    legend = re.findall(
        r'<rect x="\d+" y="\d+" width="10" height="10" fill="[^"]+"/>'
        r'<text x="\d+" y="\d+">([^<]+)</text>',
        svg,
    )
    assert "suspect" not in legend and "dead" in legend and "no leader" in legend


def test_a_vm_still_said_running_on_a_host_that_is_off_is_drawn_down() -> None:
    assert vm_state("Running", "off") == "down (host off)"
    assert vm_state("Running", "cut off") == "down (host cut off)"
    assert vm_state("Running", "on") == "Running" and vm_state("Pending", "off") == "Pending"
    s = Samples()
    s.vm(0.0, "vm-5", "Running", "node-5")
    s.vm(5.0, "vm-5", vm_state("Running", "off"), "node-5")
    s.vm(12.0, "vm-5", "Running", "node-4")
    svg = render_svg(s, 20.0, "t")
    assert "vm vm-5: down (host off) node-5 (5.0-12.0 s)" in svg
