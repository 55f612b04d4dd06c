"""Redfish documents, pure: power states, reset types, system selection, strict JSON.

No I/O here; `backends/redfish/backend.py` and `backends/redfish/client.py` read the BMC and hand
what they got to these functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from nodefence.backends.base import PowerState
from nodefence.backends.errors import BmcUnsupported
from nodefence.backends.spec import RedfishDevice

Json = dict[str, Any]

# Resource.ResetType: ForceOff is the only value that means "off, immediately". GracefulShutdown
# waits for the OS, PushPowerButton is vendor-defined (usually an ACPI request), and the restart
# and cycle values end powered on. So there is nothing to fall back to for fencing.
HARD_OFF_RESET_TYPES = ("ForceOff",)
ON_RESET_TYPES = ("On", "ForceOn")
RESET_ACTION = "#ComputerSystem.Reset"
REDFISH_POWER_STATES = ("On", "Off", "PoweringOn", "PoweringOff", "Paused")


def power_state_from(value: object) -> PowerState:
    """Map Redfish `PowerState`: only "Off" is OFF; PoweringOff is still ON (not yet proven)."""
    if value == "Off":
        return PowerState.OFF
    if value in ("On", "PoweringOn", "PoweringOff"):
        return PowerState.ON
    return PowerState.UNKNOWN


def choose_reset_type(allowed: Sequence[str] | None, preferred: Sequence[str]) -> str | None:
    """The first of `preferred` the service allows; `allowed=None` (not advertised) means the
    first preferred value; `None` when the service allows none of them."""
    if allowed is None:
        return preferred[0]
    return next((p for p in preferred if p in allowed), None)


def describe_system(doc: Json) -> str:
    """`Id=.. Name=.. UUID=..` of a ComputerSystem, for messages."""
    return " ".join(f"{k}={doc.get(k)}" for k in ("Id", "Name", "UUID") if doc.get(k))


def select_system(
    spec: RedfishDevice, systems: Sequence[tuple[str, Json]], *, node: str, device: str
) -> str:
    """The URI of the system `spec` selects among `(uri, document)` pairs of the collection.

    By `system_id`, `system_name` or `system_uuid` (first set wins; UUIDs compare case-blind),
    else the only member. Raise `BmcUnsupported` naming the members when nothing (or more
    than one) matches.
    """
    if not systems:
        raise BmcUnsupported("the Redfish service lists no systems", node=node, device=device)
    listing = "; ".join(
        f"{uri} ({describe_system(doc)})".replace(" ()", "") for uri, doc in systems
    )
    if spec.system_id is not None:
        field, want = "Id", spec.system_id
    elif spec.system_name is not None:
        field, want = "Name", spec.system_name
    elif spec.system_uuid is not None:
        field, want = "UUID", spec.system_uuid.lower()
    else:
        if len(systems) == 1:
            return systems[0][0]
        raise BmcUnsupported(
            f"the Redfish service has {len(systems)} systems and none is selected: {listing}; "
            "set systems_uri, system_id, system_name or system_uuid",
            node=node,
            device=device,
        )

    def value(doc: Json) -> str:
        got = str(doc.get(field, ""))
        return got.lower() if field == "UUID" else got

    found = [uri for uri, doc in systems if value(doc) == want]
    if len(found) == 1:
        return found[0]
    problem = "no system" if not found else f"{len(found)} systems"
    raise BmcUnsupported(
        f"{problem} with {field} {want!r} on the Redfish service; it has: {listing}",
        node=node,
        device=device,
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> Json:
    doc: Json = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate JSON key {key!r}")
        doc[key] = value
    return doc


def parse_json_strictly(raw: bytes | str | None) -> Any:
    """Parse an answer body: strict UTF-8, no duplicate keys; `ValueError` on any flaw."""
    if raw is None:
        raise ValueError("no body")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def shown(value: object) -> str:
    """A short repr of a value from the BMC, for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def no_reset_text(uri: str, want: Literal["off", "on"], allowed: Sequence[str]) -> str:
    offered = ", ".join(allowed) or "nothing"
    if want == "off":
        return (
            f"Redfish system {uri} offers no hard power-off (ForceOff); it allows {offered}. "
            "A graceful shutdown is not a fence: use another fencing device for this node"
        )
    return f"Redfish system {uri} offers no power-on (On, ForceOn); it allows {offered}"
