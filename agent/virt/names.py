"""The two virtualization APIs nodefence speaks, and how a VM of either is named (pure).

A VM is `namespace/name` for Deckhouse Virtualization (`virtualization.deckhouse.io`), as
before, and `kubevirt:namespace/name` for upstream KubeVirt (`kubevirt.io`): a cluster may serve
both, and a VM of each may carry the same namespace and name.
"""

from __future__ import annotations

import enum

KUBEVIRT_PREFIX = "kubevirt:"
AUTO = "auto"


class Virt(enum.StrEnum):
    """A virtualization API (the values are those of the agent config's `virtualization`)."""

    DECKHOUSE = "deckhouse"
    KUBEVIRT = "kubevirt"


MODES = (AUTO, *(v.value for v in Virt))  # the agent config's `virtualization`


def vm_key(virt: Virt | str, namespace: str, name: str) -> str:
    """`namespace/name` (Deckhouse) or `kubevirt:namespace/name` (KubeVirt)."""
    key = f"{namespace}/{name}"
    return KUBEVIRT_PREFIX + key if virt == Virt.KUBEVIRT else key


def virt_of_record(value: object) -> Virt:
    """The `virtualization` of a record's VM (absent, in records older than it: Deckhouse)."""
    try:
        return Virt(str(value)) if value else Virt.DECKHOUSE
    except ValueError:
        return Virt.DECKHOUSE


def split_key(key: str) -> tuple[Virt, str, str]:
    """(virtualization, namespace, name) of a `vm_key`."""
    virt = Virt.DECKHOUSE
    if key.startswith(KUBEVIRT_PREFIX):
        virt, key = Virt.KUBEVIRT, key[len(KUBEVIRT_PREFIX) :]
    namespace, _, name = key.partition("/")
    return virt, namespace, name
