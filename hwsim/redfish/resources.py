"""The JSON bodies a Redfish service answers with: resources and Base-registry error messages.

Pure functions of the machines and options; no sockets. Shapes follow DMTF schemas closely
enough for the DMTF `redfish` client and for real-world clients that read `@odata.id`,
`Members`, `PowerState`, `Actions` and `ResetType@Redfish.AllowableValues`.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from nodefence.hwsim.machine import SimMachine

Json = dict[str, Any]

ROOT = "/redfish/v1"
SYSTEMS = f"{ROOT}/Systems"
SESSION_SERVICE = f"{ROOT}/SessionService"
SESSIONS = f"{SESSION_SERVICE}/Sessions"
ACCOUNT_SERVICE = f"{ROOT}/AccountService"
ROLES = f"{ACCOUNT_SERVICE}/Roles"
ODATA = f"{ROOT}/odata"
METADATA = f"{ROOT}/$metadata"
SCHEMAS = "http://redfish.dmtf.org/schemas/v1"

# The Redfish predefined roles and their privileges (Redfish specification, "Roles").
PREDEFINED_ROLES = {
    "Administrator": (
        "Login",
        "ConfigureManager",
        "ConfigureUsers",
        "ConfigureComponents",
        "ConfigureSelf",
    ),
    "Operator": ("Login", "ConfigureComponents", "ConfigureSelf"),
    "ReadOnly": ("Login", "ConfigureSelf"),
}

# The full DMTF Resource.ResetType enum (Resource_v1 schema).
RESET_TYPES_ENUM = (
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "Nmi",
    "ForceOn",
    "PushPowerButton",
    "PowerCycle",
    "Suspend",
    "Pause",
    "Resume",
    "FullPowerCycle",
)
DEFAULT_RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle")

_REGISTRY = "Base.1.8"


def system_uri(machine: SimMachine) -> str:
    """`@odata.id` of a machine's ComputerSystem."""
    return f"{SYSTEMS}/{machine.name}"


def reset_target(machine: SimMachine) -> str:
    """URI of a machine's `ComputerSystem.Reset` action."""
    return f"{system_uri(machine)}/Actions/ComputerSystem.Reset"


def action_info_uri(machine: SimMachine) -> str:
    """URI of a machine's reset ActionInfo (used when allowable values are not inline)."""
    return f"{system_uri(machine)}/ResetActionInfo"


def redfish_version_doc() -> Json:
    """`GET /redfish`: the protocol versions offered."""
    return {"v1": f"{ROOT}/"}


def service_root(uuid: str, *, sessions: bool) -> Json:
    """`GET /redfish/v1/`; the SessionService and `Links.Sessions` only when sessions exist."""
    doc: Json = {
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "@odata.id": f"{ROOT}/",
        "Id": "RootService",
        "Name": "hwsim Redfish Service",
        "RedfishVersion": "1.6.0",
        "UUID": uuid,
        "Systems": {"@odata.id": SYSTEMS},
        "AccountService": {"@odata.id": ACCOUNT_SERVICE},
        "Links": {},
    }
    if sessions:
        doc["SessionService"] = {"@odata.id": SESSION_SERVICE}
        doc["Links"] = {"Sessions": {"@odata.id": SESSIONS}}
    return doc


def collection(odata_type: str, uri: str, name: str, members: Sequence[str]) -> Json:
    """A resource collection listing `members` by `@odata.id`."""
    return {
        "@odata.type": f"#{odata_type}",
        "@odata.id": uri,
        "Name": name,
        "Members@odata.count": len(members),
        "Members": [{"@odata.id": m} for m in members],
    }


def computer_system(
    machine: SimMachine,
    reset_types: Sequence[str] | None,
    *,
    via_action_info: bool,
    power: str | None = None,
) -> Json:
    """A ComputerSystem; `reset_types=None` leaves the allowable values out altogether;
    `power` is the state to report ("on"/"off"; default: the machine's)."""
    reset: Json = {"target": reset_target(machine)}
    if via_action_info:
        reset["@Redfish.ActionInfo"] = action_info_uri(machine)
    elif reset_types is not None:
        reset["ResetType@Redfish.AllowableValues"] = list(reset_types)
    return {
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "@odata.id": system_uri(machine),
        "Id": machine.name,
        "Name": machine.name,
        "UUID": machine.uuid,
        "SystemType": "Physical",
        "PowerState": "On" if (power or machine.power_state()) == "on" else "Off",
        "Status": {"State": "Enabled", "Health": "OK"},
        "Actions": {"#ComputerSystem.Reset": reset},
    }


def reset_action_info(machine: SimMachine, reset_types: Sequence[str] | None) -> Json:
    """The ActionInfo describing the ResetType parameter of a machine's reset action."""
    parameter: Json = {"Name": "ResetType", "Required": True, "DataType": "String"}
    if reset_types is not None:
        parameter["AllowableValues"] = list(reset_types)
    return {
        "@odata.type": "#ActionInfo.v1_1_2.ActionInfo",
        "@odata.id": action_info_uri(machine),
        "Id": "ResetActionInfo",
        "Name": "Reset Action Info",
        "Parameters": [parameter],
    }


def session_service(*, timeout: int) -> Json:
    """`GET /redfish/v1/SessionService`."""
    return {
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "@odata.id": SESSION_SERVICE,
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": True,
        "SessionTimeout": timeout,
        "Sessions": {"@odata.id": SESSIONS},
    }


def account_service() -> Json:
    """`GET /redfish/v1/AccountService`: the predefined roles (accounts are not managed here)."""
    return {
        "@odata.type": "#AccountService.v1_5_0.AccountService",
        "@odata.id": ACCOUNT_SERVICE,
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": True,
        "Roles": {"@odata.id": ROLES},
    }


def role(name: str) -> Json:
    """One predefined Role (read-only)."""
    return {
        "@odata.type": "#Role.v1_2_4.Role",
        "@odata.id": f"{ROLES}/{name}",
        "Id": name,
        "Name": f"{name} Role",
        "RoleId": name,
        "IsPredefined": True,
        "AssignedPrivileges": list(PREDEFINED_ROLES[name]),
    }


def odata_service_document(*, sessions: bool) -> Json:
    """`GET /redfish/v1/odata`: the service root and its direct children."""
    value = [
        {"name": "Service", "kind": "Singleton", "url": f"{ROOT}/"},
        {"name": "Systems", "kind": "Singleton", "url": SYSTEMS},
        {"name": "AccountService", "kind": "Singleton", "url": ACCOUNT_SERVICE},
    ]
    if sessions:
        value.append({"name": "SessionService", "kind": "Singleton", "url": SESSION_SERVICE})
    return {"@odata.context": METADATA, "value": value}


_METADATA_SCHEMAS = (
    ("ServiceRoot", "v1_5_0"),
    ("ComputerSystemCollection", None),
    ("ComputerSystem", "v1_13_0"),
    ("ActionInfo", "v1_1_2"),
    ("SessionService", "v1_1_8"),
    ("SessionCollection", None),
    ("Session", "v1_3_0"),
    ("AccountService", "v1_5_0"),
    ("RoleCollection", None),
    ("Role", "v1_2_4"),
    ("Message", "v1_1_1"),
)


def metadata_xml() -> str:
    """`GET /redfish/v1/$metadata`: the CSDL document naming the schemas the service uses."""
    refs = []
    for name, version in _METADATA_SCHEMAS:
        file = f"{name}_v1.xml"
        includes = f'    <edmx:Include Namespace="{name}"/>\n'
        if version:
            includes += f'    <edmx:Include Namespace="{name}.{version}"/>\n'
        refs.append(f'  <edmx:Reference Uri="{SCHEMAS}/{file}">\n{includes}  </edmx:Reference>\n')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">\n'
        + "".join(refs)
        + "  <edmx:DataServices>\n"
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">\n'
        '      <EntityContainer Name="Service" Extends="ServiceRoot.v1_5_0.ServiceContainer"/>\n'
        "    </Schema>\n"
        "  </edmx:DataServices>\n"
        "</edmx:Edmx>\n"
    )


def described_by(doc: Json) -> str | None:
    """The `Link: <...>; rel=describedby` value for a resource: the JSON schema of its
    `@odata.type` (versioned when the type is)."""
    odata_type = doc.get("@odata.type")
    if not isinstance(odata_type, str):
        return None
    parts = odata_type.lstrip("#").split(".")
    name = ".".join(parts[:2]) if len(parts) == 3 else parts[0]
    return f"<{SCHEMAS}/{name}.json>; rel=describedby"


def session(session_id: str, username: str) -> Json:
    """One Session resource (the token is a header, never part of the body)."""
    return {
        "@odata.type": "#Session.v1_3_0.Session",
        "@odata.id": f"{SESSIONS}/{session_id}",
        "Id": session_id,
        "Name": "User Session",
        "UserName": username,
    }


def error_body(status: int, message_id: str, message: str, resolution: str = "None.") -> Json:
    """A Redfish error response (`error` with `@Message.ExtendedInfo`) for `status`."""
    severity = "Critical" if status >= 500 else "Warning"
    return {
        "error": {
            "code": f"{_REGISTRY}.GeneralError",
            "message": f"{HTTPStatus(status).phrase}: {message}",
            "@Message.ExtendedInfo": [
                {
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": f"{_REGISTRY}.{message_id}",
                    "Message": message,
                    "Severity": severity,
                    "MessageSeverity": severity,
                    "Resolution": resolution,
                }
            ],
        }
    }
