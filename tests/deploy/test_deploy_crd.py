"""The CRD is a structural CRD, and the FenceOperation records the agent writes validate
against its schema, with no field the API server would silently prune."""

from __future__ import annotations

from collections.abc import Iterator

from nodefence.agent.fencing.events import VmOutcome
from nodefence.agent.fencing.machine import Operation, Phase
from nodefence.agent.fencing.records import to_record
from nodefence.agent.kube.client import RECORD_GROUP, RECORD_PLURAL, RECORD_VERSION
from tests.support.deploy import NAMESPACE, Obj, crd, record_validator


def structural_problems(schema: Obj, where: str = "") -> Iterator[str]:
    """Why a CRD schema is not structural (every node typed, properties only on objects)."""
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        yield f"{where or '.'}: no type"
    if "properties" in schema and schema.get("type") != "object":
        yield f"{where}: properties on a non-object"
    for name, sub in (schema.get("properties") or {}).items():
        yield from structural_problems(sub, f"{where}.{name}")
    if "items" in schema:
        yield from structural_problems(schema["items"], f"{where}[]")


def a_full_operation() -> Operation:
    vms = (
        VmOutcome("prod", "db-1", "AlwaysOn", True, running_on="worker-2", recovered_after=12.5),
        VmOutcome("prod", "batch-1", "Manual", False),
    )
    return Operation(
        node="worker-1",
        id="a1b2c3",
        phase=Phase.RECOVERING,
        power_off_sent=True,
        off_proven=True,
        level=2,
        attempts=3,
        tainted=True,
        node_deleted=True,
        vms=vms,
        errors=("level 1 ipmi: BMC unreachable",),
        reason="recovering",
        capacity_warning="",
    )


def test_the_crd_is_structural_and_serves_what_the_agent_writes() -> None:
    spec = crd()["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["scope"]) == (
        RECORD_GROUP,
        RECORD_PLURAL,
        "Namespaced",
    )
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (RECORD_VERSION, True, True)
    assert list(structural_problems(version["schema"]["openAPIV3Schema"])) == []


def test_the_records_the_agent_writes_validate_against_the_crd_schema() -> None:
    validator = record_validator()
    full = to_record(a_full_operation(), NAMESPACE, "worker-3")
    fresh = to_record(Operation(node="worker-1", id="x"), NAMESPACE, "worker-3")
    for record in (full, fresh):
        assert list(validator.iter_errors(record)) == []
    broken = to_record(a_full_operation(), NAMESPACE, "worker-3")
    broken["status"]["phase"] = "Exploded"
    del broken["spec"]["nodeName"]
    broken["status"]["unknownField"] = 1
    problems = {e.validator for e in validator.iter_errors(broken)}
    assert problems == {"enum", "required", "additionalProperties"}
