"""The leader's view codec (`nodefence.agent.leader.view_client`): what the leader encodes,
`nodefence status` decodes to the same view; a view with fields missing still reads; and the status
command reads it without loading the leader (nor the Kubernetes client)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nodefence.agent.leader.view_codec import (
    Alert,
    InventoryState,
    LeaderView,
    NodeRow,
    OperationEntry,
    PauseState,
    decode,
    encode,
    to_json,
)
from tests.conftest import REPO

VIEW = LeaderView(
    leader="node-1_ab12cd34",
    version="0.1.0",
    profile="default",
    period=1.0,
    frozen=True,
    paused=PauseState("firmware update", "alice", "2026-01-02T10:00:00Z"),
    alerts=(Alert("storm", None, "3 nodes dead at once"),),
    rejected={"bad-signature": 2},
    nodes=(
        NodeRow("node-1", "healthy", 0.4, 3.0, True, True, "heard", "", "", False, True, "0.1.0"),
        NodeRow("node-3", "dead", None, None, bmc={"summary": "CANNOT BE FENCED"}),
    ),
    operations=(
        OperationEntry("node-3", "3f2a1b9c", "FenceFailed", 3, vms_down=("default/vm-3",)),
        OperationEntry("node-4", "77aa", "Recovered", ended_at="2026-01-02T10:01:00.000Z"),
    ),
    inventory=InventoryState(3, "line 4: unknown key"),
    published_at=1767348000.5,
)


def test_what_the_leader_encodes_status_decodes_to_the_same_view() -> None:
    assert decode(encode(VIEW)) == VIEW


def test_the_json_keys_are_the_ones_status_json_has_always_shown() -> None:
    doc = json.loads(encode(VIEW))
    assert list(doc) == [
        "v", "leader", "version", "profile", "period", "frozen", "paused", "alerts",
        "rejected", "nodes", "operations", "inventory", "publishedAt",
    ]  # fmt: skip
    assert doc["nodes"][0]["heartbeatAge"] == 0.4 and doc["nodes"][1]["heartbeatAge"] is None
    assert doc["operations"][0]["vmsDown"] == ["default/vm-3"]
    assert doc["operations"][1]["vmsDown"] is None
    assert doc == to_json(VIEW)


def test_a_view_with_fields_missing_or_mistyped_reads_with_their_defaults() -> None:
    view = decode(
        json.dumps(
            {
                "leader": "l",
                "period": "soon",
                "nodes": [{"node": "n1", "heartbeatAge": "x", "ready": None}, "junk"],
                "operations": [{"node": "n1", "phase": "Fencing", "attempts": True}],
            }
        )
    )
    assert view.period == 1.0 and view.inventory is None and view.paused is None
    assert view.nodes == (NodeRow("n1", "?"),)
    assert view.operations[0].attempts == 0 and view.operations[0].vms_down is None


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_a_payload_that_is_not_a_json_object_is_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(payload)


def test_the_status_command_loads_neither_the_leader_nor_the_kubernetes_client() -> None:
    status = [
        "nodefence.agent.cli.main",
        "nodefence.agent.cli.agent",
        "nodefence.agent.leader.status_view",
        "nodefence.agent.leader.view_codec",
    ]
    never = ["nodefence.agent.leader.side_loop", "kubernetes"]
    probe = (
        f"import sys, {', '.join(status)}; print(sorted(m for m in {never!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
