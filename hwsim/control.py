"""A small HTTP control API over a running fleet, so tests and operators can inject faults
into emulated machines from another process.

Endpoints (JSON, 127.0.0.1 only):
- `GET /machines`: every machine with its power state and faults.
- `POST /machines/NAME/faults` with a JSON object of `nodefence.hwsim.machine.Faults` fields.
- `POST /machines/NAME/power` with `{"action": "cut" | "on" | "off"}` ("cut" is a power loss
  at the wall; "off"/"on" are what a BMC request would do).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.machine import Faults, SimMachine

_FAULT_FIELDS = {f.name: f.type for f in dataclasses.fields(Faults)}


def machine_json(m: SimMachine) -> dict[str, Any]:
    """A machine as the control API shows it."""
    return {
        "name": m.name,
        "uuid": m.uuid,
        "power": m.power_state(),
        "faults": dataclasses.asdict(m.faults),
    }


def apply_faults(machine: SimMachine, changes: dict[str, Any]) -> None:
    """Validate and apply fault changes; `ValueError` names the bad field."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in _FAULT_FIELDS:
            raise ValueError(f"unknown fault {key!r} (known: {', '.join(_FAULT_FIELDS)})")
        kind = _FAULT_FIELDS[key]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"fault {key!r} must be true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"fault {key!r} must be a non-negative integer")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"fault {key!r} must be a non-negative number of seconds")
        clean[key] = value
    machine.set_faults(**clean)


class ControlServer:
    """Runs the control API in a background thread."""

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fleet = fleet
        handler = _make_handler(fleet)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _make_handler(fleet: Fleet) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the fleet's own output is what matters

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/machines":
                self._send(200, [machine_json(m) for m in fleet])
            else:
                self._send(404, {"error": f"no such resource {self.path}"})

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "machines" or parts[2] not in ("faults", "power"):
                self._send(404, {"error": f"no such resource {self.path}"})
                return
            try:
                machine = fleet[parts[1]]
            except KeyError:
                self._send(404, {"error": f"unknown machine {parts[1]!r}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if parts[2] == "faults":
                    apply_faults(machine, body)
                else:
                    action = body.get("action")
                    if action == "cut":
                        machine.cut_power()
                    elif action == "off":
                        machine.request_off("control")
                    elif action == "on":
                        machine.request_on()
                    else:
                        raise ValueError("action must be cut, off or on")
            except ValueError as err:
                self._send(400, {"error": str(err)})
                return
            self._send(200, machine_json(machine))

    return Handler
