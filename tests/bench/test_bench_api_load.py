"""`bench/api_load.py --smoke` (what CI runs of the API load bench): the leader lists once and
then only watches, every agent holds its two watches, and a fence reaches the agent's watch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LEADER, AGENT = "nodefence-leader", "nodefence-agent"


def test_the_smoke_run_shows_a_leader_that_watches_and_never_lists_in_steady_state(
    tmp_path: Path,
) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "api_load.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (figures,) = json.loads(out.read_text())
    steady, fence = figures["steady"], figures["fence"]
    assert steady[LEADER]["lists"] == 0 and steady[LEADER]["quorum_lists"] == 0
    assert steady[LEADER]["watches_open"] == 5  # Nodes, Leases, VMs, attachments, records
    assert steady[AGENT]["watches_open"] == 2 * 5  # own Node and own records, 5 agents
    assert steady[AGENT]["req_s"] == 0  # heartbeats aside, an agent asks nothing in steady state
    assert steady["kubelet"]["req_s"] > 0  # the reference was measured
    assert fence[LEADER]["writes"] >= 3  # record, taint, deletion
    assert fence[AGENT]["bytes_s"] > 0  # the victim's agent saw its record by watch
    assert "steady state: leader requests/s" in run.stdout
