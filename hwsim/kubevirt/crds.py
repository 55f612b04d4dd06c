"""KubeVirt's CustomResourceDefinitions, as `virt-operator` installs them
(`pkg/virt-operator/resource/generate/components/crds.go`), for the fields hwsim and nodefence
use.

Names, scope, versions (v1, and the deprecated v1alpha3), subresources and printer columns are
upstream's. The schemas list only the fields used, with the types of KubeVirt's published
OpenAPI (`api/openapi-spec/swagger.json`); everything else is kept as it comes
(`x-kubernetes-preserve-unknown-fields`), so a real manifest still applies. Note upstream's
VirtualMachineInstance has no status subresource: its status is written with the object.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kube.errors import AlreadyExists, NotFound
from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]

GROUP = "kubevirt.io"
KUBEVIRT_NAMESPACE = "kubevirt"

# ---- a little schema language ------------------------------------------------------------

STRING: Obj = {"type": "string"}
BOOLEAN: Obj = {"type": "boolean"}
INTEGER: Obj = {"type": "integer", "format": "int64"}
TIME: Obj = {"type": "string", "format": "date-time", "nullable": True}
QUANTITY: Obj = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
}


def obj(open_: bool = True, **props: Obj) -> Obj:
    """An object with `props`; `open_`: other fields are kept too (not listed here)."""
    schema: Obj = {"type": "object", "properties": props}
    if open_:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def array(items: Obj) -> Obj:
    """A list of `items`."""
    return {"type": "array", "items": items}


def map_of(values: Obj) -> Obj:
    """A map with string keys."""
    return {"type": "object", "additionalProperties": values}


CONDITION = obj(
    type=STRING,
    status=STRING,
    reason=STRING,
    message=STRING,
    lastProbeTime=TIME,
    lastTransitionTime=TIME,
)
PHASE_TIMESTAMPS = array(obj(phase=STRING, phaseTransitionTimestamp=TIME))
MIGRATION_STATE = obj(
    startTimestamp=TIME,
    endTimestamp=TIME,
    sourceNode=STRING,
    sourcePod=STRING,
    targetNode=STRING,
    targetPod=STRING,
    targetNodeAddress=STRING,
    completed=BOOLEAN,
    failed=BOOLEAN,
    abortRequested=BOOLEAN,
    abortStatus=STRING,
    failureReason=STRING,
    migrationUid=STRING,
    mode=STRING,
)
VMI_SPEC = obj(
    domain=obj(
        cpu=obj(cores=INTEGER, sockets=INTEGER, threads=INTEGER),
        memory=obj(guest=QUANTITY),
        resources=obj(requests=map_of(QUANTITY), limits=map_of(QUANTITY)),
    ),
    evictionStrategy=STRING,
    hostname=STRING,
    terminationGracePeriodSeconds=INTEGER,
    volumes=array(
        obj(
            name=STRING,
            persistentVolumeClaim=obj(claimName=STRING, readOnly=BOOLEAN),
            dataVolume=obj(name=STRING),
        )
    ),
)
VMI_STATUS = obj(
    phase=STRING,
    reason=STRING,
    nodeName=STRING,
    conditions=array(CONDITION),
    phaseTransitionTimestamps=PHASE_TIMESTAMPS,
    migrationState=MIGRATION_STATE,
    evacuationNodeName=STRING,
    activePods=map_of(STRING),
    interfaces=array(obj(ipAddress=STRING, name=STRING)),
)
VM_SPEC = obj(
    running=BOOLEAN,
    runStrategy=STRING,
    template=obj(metadata=obj(), spec=VMI_SPEC),
)
VM_STATUS = obj(
    printableStatus=STRING,
    ready=BOOLEAN,
    created=BOOLEAN,
    runStrategy=STRING,
    conditions=array(CONDITION),
)
VMIM_SPEC = obj(vmiName=STRING)
VMIM_STATUS = obj(
    phase=STRING,
    conditions=array(CONDITION),
    phaseTransitionTimestamps=PHASE_TIMESTAMPS,
    migrationState=MIGRATION_STATE,
)
KUBEVIRT_SPEC = obj(configuration=obj(evictionStrategy=STRING))
KUBEVIRT_STATUS = obj(phase=STRING)


def _column(name: str, path: str, kind: str = "string", priority: int = 0) -> Obj:
    column: Obj = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


AGE = _column("Age", ".metadata.creationTimestamp", "date")
PHASE = _column("Phase", ".status.phase")


def _crd(
    plural: str,
    kind: str,
    short: list[str],
    spec: Obj,
    status: Obj,
    columns: list[Obj],
    status_subresource: bool,
) -> Obj:
    versions = []
    for name, served_by_default in (("v1", True), ("v1alpha3", False)):
        version: Obj = {
            "name": name,
            "served": True,
            "storage": served_by_default,
            "schema": {
                "openAPIV3Schema": obj(
                    apiVersion=STRING,
                    kind=STRING,
                    metadata={"type": "object"},
                    spec=spec,
                    status=status,
                )
            },
            "additionalPrinterColumns": columns,
        }
        if not served_by_default:
            version["deprecated"] = True
            version["deprecationWarning"] = (
                "kubevirt.io/v1alpha3 is now deprecated and will be removed in a future release."
            )
        if status_subresource:
            version["subresources"] = {"status": {}}
        versions.append(version)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/component": "kubevirt"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "plural": plural,
                "singular": plural[:-1],
                "kind": kind,
                "shortNames": short,
                "categories": ["all"],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    }


def crds() -> list[Obj]:
    """VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration, KubeVirt."""
    ready = ".status.conditions[?(@.type=='Ready')].status"
    return [
        _crd(
            "virtualmachines",
            "VirtualMachine",
            ["vm", "vms"],
            VM_SPEC,
            VM_STATUS,
            [AGE, _column("Status", ".status.printableStatus"), _column("Ready", ready)],
            True,
        ),
        _crd(
            "virtualmachineinstances",
            "VirtualMachineInstance",
            ["vmi", "vmis"],
            VMI_SPEC,
            VMI_STATUS,
            [
                AGE,
                PHASE,
                _column("IP", ".status.interfaces[0].ipAddress"),
                _column("NodeName", ".status.nodeName"),
                _column("Ready", ready),
                _column(
                    "Live-Migratable",
                    ".status.conditions[?(@.type=='LiveMigratable')].status",
                    priority=1,
                ),
            ],
            False,
        ),
        _crd(
            "virtualmachineinstancemigrations",
            "VirtualMachineInstanceMigration",
            ["vmim", "vmims"],
            VMIM_SPEC,
            VMIM_STATUS,
            [PHASE, _column("VMI", ".spec.vmiName")],
            True,
        ),
        _crd(
            "kubevirts",
            "KubeVirt",
            ["kv", "kvs"],
            KUBEVIRT_SPEC,
            KUBEVIRT_STATUS,
            [AGE, PHASE],
            True,
        ),
    ]


def install(store: ObjectStore, eviction_strategy: str | None = None) -> None:
    """Serve KubeVirt's API on `store` and create its KubeVirt resource (`kubevirt/kubevirt`,
    Deployed), whose `spec.configuration.evictionStrategy` is `eviction_strategy` (None: unset,
    KubeVirt's default None). Installing twice changes nothing."""
    for crd in crds():
        try:
            store.create("customresourcedefinitions", crd)
        except AlreadyExists:
            pass
    try:
        store.get("namespaces", KUBEVIRT_NAMESPACE)
    except NotFound:
        store.create("namespaces", {"metadata": {"name": KUBEVIRT_NAMESPACE}})
    config: Obj = {}
    if eviction_strategy:
        config["evictionStrategy"] = eviction_strategy
    kv = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": KUBEVIRT_NAMESPACE},
        "spec": {"configuration": config},
    }
    try:
        store.create("kubevirts.kubevirt.io", kv, KUBEVIRT_NAMESPACE)
    except AlreadyExists:
        return
    store.patch(
        "kubevirts.kubevirt.io",
        "kubevirt",
        {"status": {"phase": "Deployed"}},
        KUBEVIRT_NAMESPACE,
        subresource="status",
    )
