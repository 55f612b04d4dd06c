"""The fence certificate (nodefence.agent.fencing.evidence): what every FenceOperation keeps of its
decision and proof, how a new leader goes on with it, and how `nodefence explain` tells it.
The executor runs with in-memory edges (tests/support/executor_fakes.py); the whole story from
a real power loss is checked on the `power-loss` scenario (tests/e2e/test_scenarios.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from nodefence.agent.cli.explain import pick, story
from nodefence.agent.fencing.evidence import KEEP_FIRST, KEEP_LAST, Certificate, EvidenceBook
from nodefence.agent.fencing.operation import Phase
from tests.support.executor_fakes import FakeApi, FakeNode, N, make, record, settle, world

FACTS = {
    "verdict": {"health": "dead", "reason": "no heartbeat for 4.1 s"},
    "lastHeartbeat": {"at": "2026-01-01T00:00:00.000Z", "ageSeconds": 4.1, "boot": "b1", "seq": 41},
    "kubelet": {"leaseAgeSeconds": 6.0, "ready": True},
    "peerReports": [{"peer": "w2", "reachable": False, "ageSeconds": 0.4}],
}
LEASE = {"leaseGeneration": 3, "leaseResourceVersion": "77"}


def kinds(steps: list[dict[str, Any]]) -> list[str]:
    return [
        f"{s['kind']}:{s.get('before') or s.get('request') or s.get('phase') or ''}" for s in steps
    ]


async def test_every_operation_keeps_its_decision_each_bmc_step_and_each_lease_check(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    ex = make(
        tmp_path,
        api,
        machine,
        leader,
        decision_facts=lambda node: dict(FACTS),
        lease_generation=lambda: dict(LEASE),
    )
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await settle(ex)
    status = record(api)["status"]
    assert status["phase"] == "Recovered"
    evidence = status["evidence"]
    assert evidence["operation"] == ex.operations[N].id
    [decision] = evidence["decisions"]
    assert decision["leader"] == "leader-a_1" and decision["lastHeartbeat"]["seq"] == 41
    assert decision["kubelet"]["leaseAgeSeconds"] == 6.0 and decision["peerReports"]
    steps = evidence["steps"]
    assert kinds(steps) == [
        "lease-confirmed:record",  # only the Lease holder writes a new record
        "lease-confirmed:power-off",
        "phase:Fencing",  # the point of no return, stored before the request
        "power:off",
        "power:verify-off",
        "walk:",
        "phase:PoweredOff",
        "lease-confirmed:taint",
        "tainted:",
        "lease-confirmed:release-pods",  # its pods, then its VolumeAttachments, let go
        "lease-confirmed:release-attachments",
        "lease-confirmed:delete-node",
        "node-deleted:",
        "phase:Recovering",
        "phase:Recovered",
    ]
    power = [s for s in steps if s["kind"] == "power"]
    assert all(
        (s["device"], s["type"], s["address"]) == ("ipmi", "ipmi", "127.0.0.1:9") for s in power
    )
    assert [s["result"] for s in power] == ["sent", "off"]
    leases = [s for s in steps if s["kind"] == "lease-confirmed"]
    assert all(s["leader"] == "leader-a_1" and s["leaseGeneration"] == 3 for s in leases)
    assert all(s["at"].endswith("Z") for s in steps)
    assert "pw" not in str(evidence)  # the BMC password of the inventory


async def test_a_new_leader_goes_on_with_the_evidence_stored_so_far(tmp_path: Path) -> None:
    api, machine, leader = world()
    first = make(tmp_path, api, machine, leader, decision_facts=lambda node: dict(FACTS))
    first.submit(N, decided_at=10.0, uid="uid-1")
    await settle(first)
    rec = copy.deepcopy(record(api))
    # The record as a leader that died right after the proof left it, evidence up to then.
    rec["status"] |= {"phase": Phase.POWERED_OFF.value, "tainted": False, "nodeDeleted": False}
    rec["status"]["evidence"]["steps"] = rec["status"]["evidence"]["steps"][:6]
    fresh = FakeApi(calls=[], records={rec["metadata"]["name"]: rec}, rv=100)
    fresh.nodes[N] = FakeNode("uid-1")
    second = make(tmp_path, fresh, machine, leader, identity="leader-b_2")
    assert await second.resume() == 1
    second.go_on(N)  # the new leader saw no life for a window: the proof still holds
    await settle(second)
    evidence = record(fresh)["status"]["evidence"]
    assert evidence["decisions"][0]["leader"] == "leader-a_1"
    steps = kinds(evidence["steps"])
    assert steps[:6] == kinds(rec["status"]["evidence"]["steps"])
    assert "resumed:" in steps and steps.index("resumed:") == 6
    assert "lease-confirmed:taint" in steps[6:]


def test_the_step_log_is_bounded_and_says_how_many_were_left_out() -> None:
    cert = Certificate("op")
    for i in range(KEEP_FIRST + KEEP_LAST + 25):
        cert.add({"i": i})
    doc = cert.to_json()
    assert len(doc["steps"]) == KEEP_FIRST + KEEP_LAST and doc["omittedSteps"] == 25
    assert doc["steps"][KEEP_FIRST - 1]["i"] == KEEP_FIRST - 1  # the first ones stay
    assert doc["steps"][-1]["i"] == KEEP_FIRST + KEEP_LAST + 24  # and the newest


def test_unreadable_stored_evidence_is_dropped_not_fatal() -> None:
    for stored in (None, "x", {"operation": "other"}, {"operation": "op", "steps": ["x", {}]}):
        cert = Certificate.from_json("op", stored)
        assert cert.operation == "op" and all(isinstance(s, dict) for s in cert.steps)


def test_a_decision_belongs_to_the_operation_that_follows_it() -> None:
    book = EvidenceBook("leader-a", lambda: 0.0)
    assert book.to_json("w1", "op1") is None
    book.decided("w1", {"verdict": {"health": "dead"}})
    doc = book.to_json("w1", "op1")
    assert doc is not None and doc["decisions"][0]["leader"] == "leader-a"
    book.step("w1", "op2", "phase", phase="Pending")  # a new operation: a new certificate
    assert book.to_json("w1", "op2") == {
        "operation": "op2",
        "decisions": [],
        "steps": [{"at": "1970-01-01T00:00:00.000Z", "kind": "phase", "phase": "Pending"}],
    }


RECORD: dict[str, Any] = {
    "metadata": {"name": "fence-w1-op1"},
    "spec": {"nodeName": "w1", "operationId": "op1", "action": "off"},
    "status": {
        "phase": "Recovered",
        "offProven": True,
        "proof": "read-back",
        "level": 1,
        "startedAt": "2026-01-01T00:00:00Z",
        "vms": [
            {
                "namespace": "prod",
                "name": "a",
                "runPolicy": "AlwaysOn",
                "expectedRestart": True,
                "runningOn": "w2",
                "recoveredAfterSeconds": 1.5,
                "outageSeconds": 5.6,
            },
            {
                "namespace": "prod",
                "name": "b",
                "runPolicy": "Manual",
                "expectedRestart": False,
                "runningOn": None,
            },
        ],
        "lastHeartbeatAt": "2026-01-01T00:00:00.000Z",
        "evidence": {
            "operation": "op1",
            "decisions": [{"at": "2026-01-01T00:00:00.000Z", "leader": "leader-a", **FACTS}],
            "steps": [
                {
                    "at": "2026-01-01T00:00:01.000Z",
                    "kind": "lease-confirmed",
                    "before": "power-off",
                    "leader": "leader-a",
                    **LEASE,
                },
                {
                    "at": "2026-01-01T00:00:01.100Z",
                    "kind": "power",
                    "level": 1,
                    "device": "ipmi",
                    "type": "ipmi",
                    "address": "10.0.0.1:623",
                    "request": "off",
                    "result": "sent",
                },
                {
                    "at": "2026-01-01T00:00:01.200Z",
                    "kind": "power",
                    "level": 2,
                    "device": "redfish",
                    "type": "redfish",
                    "address": "https://10.0.0.2:443",
                    "request": "confirm-off",
                    "result": "auth_failed",
                    "detail": "refused",
                },
                {
                    "at": "2026-01-01T00:00:01.300Z",
                    "kind": "walk",
                    "offProven": True,
                    "level": 1,
                    "elapsedSeconds": 0.3,
                },
                {"at": "2026-01-01T00:00:01.400Z", "kind": "node-deleted", "nodeUID": "u1"},
            ],
        },
    },
}


def test_explain_tells_the_decision_every_step_and_the_vms() -> None:
    text = "\n".join(story(RECORD))
    for expected in (
        "FenceOperation fence-w1-op1: node w1, operation op1",
        "Off proven: yes, by read-back (level 1)",
        "Decision at 2026-01-01T00:00:00.000Z by leader leader-a:",
        "last heartbeat: 2026-01-01T00:00:00.000Z (4.1 s before), boot b1, sequence 41",
        "kubelet Lease: 6.0 s old, Ready True",
        "w2: unreachable (0.4 s before)",
        "Lease confirmed by leader-a before power-off (generation 3, resourceVersion 77)",
        "level 1 ipmi (ipmi 10.0.0.1:623): off -> sent",
        "level 2 redfish (redfish https://10.0.0.2:443): confirm-off -> auth_failed  [refused]",
        "power walk ended: Off proven by level 1 in 0.3 s",
        "Node deleted (uid u1)",
        "VMs: 1 restarted on other nodes; 1 left stopped (prod/b, Manual: start it by hand)",
        "VM prod/a (AlwaysOn): running on w2, down 5.6 s from the node's last heartbeat"
        " (2026-01-01T00:00:00.000Z); 1.5 s after the Node's cleanup",
        "VM prod/b (Manual): left stopped by its runPolicy: start it by hand",
    ):
        assert expected in text, expected


def test_explain_picks_by_record_name_operation_id_or_the_newest_of_a_node() -> None:
    older = copy.deepcopy(RECORD)
    older["metadata"]["name"], older["spec"]["operationId"] = "fence-w1-op0", "op0"
    older["status"]["startedAt"] = "2025-01-01T00:00:00Z"
    records = [older, RECORD]
    assert pick(records, "w1") is RECORD
    assert pick(records, "op0") is older and pick(records, "fence-w1-op0") is older
    assert pick(records, "w9") is None
    bare = {"metadata": {"name": "x"}, "spec": {"nodeName": "w1"}, "status": {}}
    assert "no evidence stored" in story(bare)[-1]
