"""`nodefence fence` on a terminal, as a person uses it: Ctrl-C at the prompt and during the
power walk ends it with one line (what was sent, on which channel, how to check), never a
traceback; the wait for the read-back shows its progress. Emulated BMCs on 127.0.0.1."""

from __future__ import annotations

from tests.conftest import RunningFleet
from tests.support.terminal import Terminal


async def test_ctrl_c_while_waiting_for_the_read_back_says_what_was_sent_and_how_to_check(
    bmc_fleet: RunningFleet,
) -> None:
    bmc_fleet.fleet["node-2"].set_faults(off_delay=4.0)  # Off reads back only 4 s later
    inventory = str(bmc_fleet.inventory)
    term = Terminal("fence", "node-2", "-i", inventory, "--yes")
    await term.expect("verify-off   waiting")  # the read-back wait, drawn in place
    term.type(b"\x03")
    code = await term.exit_code()
    assert code == 130, term.text
    assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text
    [said] = [line for line in term.text.splitlines() if "interrupted" in line]
    assert "power-off was sent to node-2 (level 1 ipmi)" in said
    assert "power state is unknown" in said
    assert f"nodefence fence node-2 -i {inventory} -a status" in said


async def test_ctrl_c_at_the_prompt_changes_nothing(bmc_fleet: RunningFleet) -> None:
    term = Terminal("fence", "node-1", "-i", str(bmc_fleet.inventory))
    await term.expect("Type the node name to confirm")
    assert "This will power off node node-1" in term.text  # power off, not "off"
    term.type(b"\x03")
    assert await term.exit_code() == 130
    assert "not confirmed (interrupted), nothing done" in term.text
    assert "Traceback" not in term.text
    assert bmc_fleet.fleet["node-1"].power_changes == 0


async def test_ctrl_c_before_anything_was_sent_says_the_node_is_unchanged(
    bmc_fleet: RunningFleet,
) -> None:
    # The IPMI BMC answers nothing: the walk is still trying to log in when Ctrl-C comes.
    await bmc_fleet.bmcs.ipmi_bmcs["node-3"].stop()
    await bmc_fleet.bmcs.redfish_bmcs["node-3"].stop()
    term = Terminal("fence", "node-3", "-i", str(bmc_fleet.inventory), "--yes", "--no-record")
    await term.expect("reading the power state first")  # nothing answers it
    term.type(b"\x03")
    assert await term.exit_code() == 130
    assert "Traceback" not in term.text
    assert "interrupted before any power request was sent: node-3 unchanged" in term.text
    assert bmc_fleet.fleet["node-3"].power_changes == 0
