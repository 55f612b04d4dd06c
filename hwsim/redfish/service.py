"""What a Redfish BMC answers: authentication, sessions, routing and power actions.

`RedfishService.handle` turns one parsed request into a `Reply`; it knows no sockets, so the
transport (`nodefence.hwsim.redfish.server`) owns threads, TLS and the transport-level faults
(`unreachable`, `slow`). The `fail_first`, `errors` and `wrong_credentials` faults are answered
here. Faults are those the machine shows on this service's channel ("redfish" by default; a PDU
outlet served over Redfish is the channel "pdu"), see `SimMachine.faults_of`.
Thread-safe: the transport calls `handle` from one thread per connection.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import resources as res
from nodefence.hwsim.redfish.resources import Json

_OFF = frozenset({"ForceOff", "GracefulShutdown"})
_ON = frozenset({"On", "ForceOn"})
_CYCLE = frozenset({"ForceRestart", "GracefulRestart", "PowerCycle", "FullPowerCycle"})


@dataclass(frozen=True)
class RedfishOptions:
    """How one emulated service behaves; the defaults are a well-behaved modern BMC.

    - `sessions`: offer the SessionService (else it is absent and `POST .../Sessions` is 404).
    - `basic_auth`: accept HTTP Basic credentials on every request.
    - `reset_types`: `ResetType@Redfish.AllowableValues`; `None` leaves the annotation out.
    - `reset_types_via_action_info`: publish the allowable values in an `@Redfish.ActionInfo`
      resource instead of inline (as some vendors do).
    - `reject_noop_reset`: answer 409 to a reset that asks for the state the system is already
      in (e.g. ForceOff while Off), as some vendors do.
    - `session_timeout`: the advertised SessionTimeout, in seconds (sessions do not expire here;
      tests revoke them with `RedfishService.drop_sessions`).
    - `protect_root`: the service root needs credentials too (401 without them), as some
      vendors do although the specification leaves it open.
    """

    sessions: bool = True
    basic_auth: bool = True
    reset_types: Sequence[str] | None = res.DEFAULT_RESET_TYPES
    reset_types_via_action_info: bool = False
    reject_noop_reset: bool = False
    session_timeout: int = 1800
    protect_root: bool = False


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, JSON body (or none) and extra headers; `text` (with its
    `media_type`) instead of JSON for the XML metadata document."""

    status: int
    body: Json | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    media_type: str = "application/json; charset=utf-8"


def error(status: int, message_id: str, message: str, **headers: str) -> Reply:
    """A Redfish error reply."""
    return Reply(status, res.error_body(status, message_id, message), headers)


class RedfishService:
    """The state of one Redfish service: its systems, credentials and open sessions."""

    def __init__(
        self,
        machines: Sequence[SimMachine],
        username: str,
        password: str,
        options: RedfishOptions | None = None,
        channel: str = "redfish",
    ) -> None:
        if not machines:
            raise ValueError("a Redfish service needs at least one machine")
        self.channel = channel
        self.machines = {m.name: m for m in machines}
        self.options = options or RedfishOptions()
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, "hwsim-redfish:" + ",".join(self.machines)))
        self._first = machines[0]
        self._username = username
        self._password = password
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, str]] = {}  # token -> (session id, user)

    def set_password(self, password: str) -> None:
        """Change the user's password, as an operator does on a running BMC; open sessions
        are ended (as most BMCs do on a password change)."""
        with self._lock:
            self._password = password
            self._sessions.clear()

    def active_sessions(self) -> int:
        """How many sessions are open (logins minus logouts)."""
        with self._lock:
            return len(self._sessions)

    def drop_sessions(self) -> None:
        """Forget every session, as a BMC does on reboot or session expiry."""
        with self._lock:
            self._sessions.clear()

    def machine_for(self, raw_path: str) -> SimMachine:
        """The machine whose faults apply to a request: the addressed system, else the first."""
        parts = _segments(raw_path)
        if len(parts) >= 4 and parts[:3] == ["redfish", "v1", "Systems"]:
            return self.machines.get(parts[3], self._first)
        return self._first

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request (faults `fail_first`, `errors` and `wrong_credentials` included).

        `headers` are keyed by lower-case name. A successful GET or HEAD carries `Allow` (the
        methods of that URI) and a `Link` to the JSON schema of the resource (rel=describedby).
        """
        reply = self._handle(method, raw_path, headers, body)
        if method in ("GET", "HEAD") and 200 <= reply.status < 300:
            extra = dict(reply.headers)
            allowed = self.allowed(raw_path)
            if allowed:
                extra.setdefault("Allow", ", ".join(allowed))
            link = res.described_by(reply.body) if reply.body is not None else None
            if link is not None:
                extra.setdefault("Link", link)
            reply = Reply(reply.status, reply.body, extra, reply.text, reply.media_type)
        return reply

    def allowed(self, raw_path: str) -> tuple[str, ...]:
        """The methods a URI supports (for `Allow`); () for a URI that does not exist."""
        parts = _segments(raw_path)
        path = "/" + "/".join(parts)
        read = ("GET", "HEAD")
        if path in ("/redfish", res.ROOT, res.ODATA, res.METADATA, res.SYSTEMS):
            return read
        if path in (res.ACCOUNT_SERVICE, res.ROLES) or (
            len(parts) == 5
            and path.startswith(res.ROLES + "/")
            and parts[4] in res.PREDEFINED_ROLES
        ):
            return read
        if len(parts) >= 4 and parts[:3] == ["redfish", "v1", "Systems"]:
            if parts[3] not in self.machines:
                return ()
            rest = parts[4:]
            if not rest or (
                rest == ["ResetActionInfo"] and self.options.reset_types_via_action_info
            ):
                return read
            return ("POST",) if rest == ["Actions", "ComputerSystem.Reset"] else ()
        if self.options.sessions:
            if path == res.SESSION_SERVICE:
                return read
            if path in (res.SESSIONS, res.SESSIONS + "/Members"):
                return (*read, "POST")
            if len(parts) == 5 and path.startswith(res.SESSIONS + "/"):
                return (*read, "DELETE")
        return ()

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        machine = self.machine_for(raw_path)
        if machine.consume_failure(self.channel):
            return error(
                503,
                "ServiceTemporarilyUnavailable",
                "The service is temporarily unavailable (injected fault).",
                **{"Retry-After": "1"},
            )
        version = headers.get("odata-version")
        if version is not None and version.strip() != "4.0":
            return error(
                412, "PreconditionFailed", f"OData-Version {version!r} is not supported; use 4.0."
            )
        parts = _segments(raw_path)
        if parts[:3] == ["redfish", "v1", "Systems"] and machine.faults_of(self.channel).errors:
            return error(500, "InternalError", "The service failed on this request (injected).")
        path = "/" + "/".join(parts)
        # Readable without credentials, as the specification requires (the service root may
        # be protected on purpose: `protect_root`, as some vendors do).
        public = {"/redfish", res.ODATA, res.METADATA} | (
            set() if self.options.protect_root else {res.ROOT}
        )
        if method in ("GET", "HEAD") and path in public:
            return self._public(path)
        login_uris = (res.SESSIONS, res.SESSIONS + "/Members")
        if path in login_uris and method == "POST" and self.options.sessions:
            return self._login(machine, body)
        denied = self._authenticate(machine, headers)
        if denied is not None:
            return denied
        return self._route(method, path, parts, body)

    # --- authentication -------------------------------------------------------------------

    def _root(self) -> Json:
        return res.service_root(self.uuid, sessions=self.options.sessions)

    def _public(self, path: str) -> Reply:
        if path == "/redfish":
            return Reply(200, res.redfish_version_doc())
        if path == res.ODATA:
            return Reply(200, res.odata_service_document(sessions=self.options.sessions))
        if path == res.METADATA:
            return Reply(200, text=res.metadata_xml(), media_type="application/xml; charset=utf-8")
        return Reply(200, self._root())

    def _credentials_ok(self, machine: SimMachine, username: str, password: str) -> bool:
        if machine.faults_of(self.channel).wrong_credentials:
            return False
        user_ok = hmac.compare_digest(username.encode(), self._username.encode())
        return hmac.compare_digest(password.encode(), self._password.encode()) and user_ok

    def _authenticate(self, machine: SimMachine, headers: Mapping[str, str]) -> Reply | None:
        token = headers.get("x-auth-token")
        if token and self.options.sessions:
            with self._lock:
                if token in self._sessions:
                    return None
        auth = headers.get("authorization", "")
        if auth[:6].lower() == "basic " and self.options.basic_auth:
            try:
                user, _, password = (
                    base64.b64decode(auth[6:], validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if self._credentials_ok(machine, user, password):
                return None
        extra = {"WWW-Authenticate": 'Basic realm="hwsim"'} if self.options.basic_auth else {}
        return error(401, "NoValidSession", "No valid session or credentials.", **extra)

    def _login(self, machine: SimMachine, body: bytes) -> Reply:
        doc = _json_object(body)
        if doc is None:
            return error(400, "MalformedJSON", "The request body is not a JSON object.")
        user, password = doc.get("UserName"), doc.get("Password")
        if not isinstance(user, str) or not isinstance(password, str):
            return error(400, "PropertyMissing", "UserName and Password are required strings.")
        if not self._credentials_ok(machine, user, password):
            return error(401, "InsufficientPrivilege", "Invalid username or password.")
        session_id = uuid.uuid4().hex[:16]
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[token] = (session_id, user)
        location = f"{res.SESSIONS}/{session_id}"
        return Reply(
            201, res.session(session_id, user), {"X-Auth-Token": token, "Location": location}
        )

    # --- resources --------------------------------------------------------------------------

    def _route(self, method: str, path: str, parts: list[str], body: bytes) -> Reply:
        opts = self.options
        if path in ("/redfish", res.ROOT, res.ODATA, res.METADATA):
            return _only(method, "GET") or self._public(path)
        if path == res.ACCOUNT_SERVICE:
            return _only(method, "GET") or Reply(200, res.account_service())
        if path == res.ROLES:
            members = [f"{res.ROLES}/{name}" for name in res.PREDEFINED_ROLES]
            doc = res.collection("RoleCollection.RoleCollection", res.ROLES, "Roles", members)
            return _only(method, "GET") or Reply(200, doc)
        if (
            len(parts) == 5
            and path.startswith(res.ROLES + "/")
            and parts[4] in res.PREDEFINED_ROLES
        ):
            # Predefined roles cannot be changed.
            return _only(method, "GET") or Reply(200, res.role(parts[4]))
        if path == res.SYSTEMS:
            return _only(method, "GET") or Reply(200, self._systems())
        if len(parts) >= 4 and parts[:3] == ["redfish", "v1", "Systems"]:
            machine = self.machines.get(parts[3])
            if machine is None:
                return error(404, "ResourceNotFound", f"No system {parts[3]!r}.")
            rest = parts[4:]
            if not rest:
                return _only(method, "GET") or Reply(
                    200,
                    res.computer_system(
                        machine,
                        opts.reset_types,
                        via_action_info=opts.reset_types_via_action_info,
                        power=machine.power_seen_by(self.channel),
                    ),
                )
            if rest == ["Actions", "ComputerSystem.Reset"]:
                return _only(method, "POST") or self._reset(machine, body)
            if rest == ["ResetActionInfo"] and opts.reset_types_via_action_info:
                return _only(method, "GET") or Reply(
                    200, res.reset_action_info(machine, opts.reset_types)
                )
        if opts.sessions:
            if path == res.SESSION_SERVICE:
                return _only(method, "GET") or Reply(
                    200, res.session_service(timeout=opts.session_timeout)
                )
            if path in (res.SESSIONS, res.SESSIONS + "/Members"):
                return _only(method, "GET", "POST") or Reply(200, self._sessions_doc())
            if len(parts) == 5 and path.startswith(res.SESSIONS + "/"):
                return self._session(method, parts[4])
        return error(404, "ResourceNotFound", f"No resource at {path}.")

    def _systems(self) -> Json:
        members = [res.system_uri(m) for m in self.machines.values()]
        return res.collection(
            "ComputerSystemCollection.ComputerSystemCollection",
            res.SYSTEMS,
            "Computer System Collection",
            members,
        )

    def _sessions_doc(self) -> Json:
        with self._lock:
            ids = [f"{res.SESSIONS}/{sid}" for sid, _ in self._sessions.values()]
        return res.collection("SessionCollection.SessionCollection", res.SESSIONS, "Sessions", ids)

    def _session(self, method: str, session_id: str) -> Reply:
        with self._lock:
            found = [(t, u) for t, (sid, u) in self._sessions.items() if sid == session_id]
            if not found:
                return error(404, "ResourceNotFound", f"No session {session_id!r}.")
            token, user = found[0]
            if method == "DELETE":
                del self._sessions[token]
                return Reply(204)
        return _only(method, "GET", "DELETE") or Reply(200, res.session(session_id, user))

    def _reset(self, machine: SimMachine, body: bytes) -> Reply:
        doc = _json_object(body)
        if doc is None:
            return error(400, "MalformedJSON", "The request body is not a JSON object.")
        kind = doc.get("ResetType")
        if kind is None:
            return error(400, "ActionParameterMissing", "ResetType is required.")
        allowed = self.options.reset_types
        allowed = res.RESET_TYPES_ENUM if allowed is None else allowed
        if not isinstance(kind, str) or kind not in allowed:
            return error(
                400,
                "ActionParameterNotSupported",
                f"ResetType {kind!r} is not supported; allowed: {', '.join(allowed)}.",
            )
        power = machine.power_seen_by(self.channel)
        if self.options.reject_noop_reset and (
            (kind in _OFF and power == "off") or (kind in _ON and power == "on")
        ):
            return error(409, "ResourceInUse", f"The system is already {power.capitalize()}.")
        if kind in _OFF:
            machine.request_off(self.channel)
        elif kind in _ON:
            machine.request_on()
        elif kind in _CYCLE:
            machine.request_off(self.channel)
            machine.request_on()
        elif kind == "PushPowerButton" and power == "on":
            machine.request_off(self.channel)
        elif kind == "PushPowerButton":
            machine.request_on()
        return Reply(204)


def _segments(raw_path: str) -> list[str]:
    path = urlsplit(raw_path).path
    return [unquote(p) for p in path.split("/") if p]


def _only(method: str, *allowed: str) -> Reply | None:
    if method in allowed or (method == "HEAD" and "GET" in allowed):
        return None
    methods = [*allowed[:1], "HEAD", *allowed[1:]] if "GET" in allowed else list(allowed)
    return error(
        405,
        "OperationNotAllowed",
        f"{method} is not allowed here.",
        Allow=", ".join(methods),
    )


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
