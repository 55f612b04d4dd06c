"""The typed messages between an IPMI backend and its worker process, and their framing.

One message is one frame: a 4-byte big-endian length, then a JSON object whose `t` names the
message type; bytes travel as hex. The backend sends `Open` once (the BMC and its password:
over this socket, never on a command line or in the environment), then `Command`s one at a
time and at last `Logout`; the worker answers each with `Answer` or `Failure`. Unasked, the
worker reports `Ready` once its libraries are loaded and, as they happen, what the backend
needs to close a BMC session itself if it has to kill the worker: `SessionKeys` (sent just
before RAKP 3, after which the BMC may hold the session), `SessionSequence` (before every
packet in the session) and `SessionClosed`; and what the backend needs to say no more than it
saw: `Heard` (the first datagram from the BMC arrived) and `LoggedIn` (a session is up).
Pure: no I/O here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.spec import Secret

MAX_FRAME = 64 * 1024  # far above any message; a larger length means a broken stream
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class Open:
    """Backend -> worker, once: the BMC to talk to."""

    address: str
    port: int
    username: str
    password: Secret
    cipher: int
    privilege: int


@dataclass(frozen=True)
class Command:
    """Backend -> worker: one IPMI request in the session (logging in first if needed)."""

    id: int
    netfn: int
    command: int
    data: bytes = b""


@dataclass(frozen=True)
class Logout:
    """Backend -> worker: close the session, if one is open; answered with an empty `Answer`."""

    id: int


@dataclass(frozen=True)
class Ready:
    """Worker -> backend: the IPMI library is loaded; requests are served at once."""


@dataclass(frozen=True)
class Heard:
    """Worker -> backend, once: a datagram came back from the BMC (it is not "unreachable")."""


@dataclass(frozen=True)
class LoggedIn:
    """Worker -> backend: a session with the BMC is up (the credentials were accepted)."""


@dataclass(frozen=True)
class Answer:
    """Worker -> backend: the data of a successful `Command` (or `Logout`)."""

    id: int
    data: bytes = b""


@dataclass(frozen=True)
class Failure:
    """Worker -> backend: the request failed; `kind` names the `FenceError` subclass."""

    id: int
    kind: str
    message: str


@dataclass(frozen=True)
class SessionKeys:
    """Worker -> backend: a session the BMC may hold from now on, and how to sign in it."""

    session_id: int
    integrity: Literal["sha1", "sha256"]
    k1: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)


@dataclass(frozen=True)
class SessionSequence:
    """Worker -> backend: the session sequence number of the packet about to be sent."""

    session_id: int
    sequence: int


@dataclass(frozen=True)
class SessionClosed:
    """Worker -> backend: the session was logged out (its Close Session was sent)."""

    session_id: int


Message = (
    Open
    | Command
    | Logout
    | Ready
    | Heard
    | LoggedIn
    | Answer
    | Failure
    | SessionKeys
    | SessionSequence
    | SessionClosed
)
_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Open,
        Command,
        Logout,
        Ready,
        Heard,
        LoggedIn,
        Answer,
        Failure,
        SessionKeys,
        SessionSequence,
        SessionClosed,
    )
}
_FIELD_TYPES = {"int": int, "str": str, "bytes": bytes, "Secret": Secret}

ERROR_KINDS: dict[str, type[FenceError]] = {
    cls.__name__: cls
    for cls in (BmcUnreachable, BmcAuthFailed, BmcUnsupported, BmcTimeout, BmcProtocolError)
}


class WireError(Exception):
    """A frame that is not one of our messages: the stream cannot be trusted any more."""


def encode(message: Message) -> bytes:
    """One frame holding `message` (a password is revealed into it: send it, never log it)."""
    body: dict[str, Any] = {"t": type(message).__name__}
    for f in fields(message):
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, Secret):
            value = value.reveal()
        body[f.name] = value
    raw = json.dumps(body, separators=(",", ":")).encode()
    return _LENGTH.pack(len(raw)) + raw


def decode(raw: bytes) -> Message:
    """The message in one frame's body; raises `WireError` for anything else."""
    try:
        body = json.loads(raw)
        cls = _TYPES[body.pop("t")]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise WireError(f"not a worker message: {type(err).__name__}") from None
    if set(body) != {f.name for f in fields(cls)}:
        raise WireError(f"{cls.__name__} with fields {sorted(body)}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        kind = str(f.type).split("[")[0]
        value = body[f.name]
        if kind == "bytes" and isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                raise WireError(f"{cls.__name__}.{f.name} is not hex") from None
        elif kind == "Secret" and isinstance(value, str):
            value = Secret(value)
        elif kind == "Literal":
            kind = "str"
        wanted = _FIELD_TYPES.get(kind)
        if wanted is None or not isinstance(value, wanted) or isinstance(value, bool):
            raise WireError(f"{cls.__name__}.{f.name} has the wrong type")
        values[f.name] = value
    message: Message = cls(**values)
    if isinstance(message, SessionKeys) and message.integrity not in ("sha1", "sha256"):
        raise WireError(f"SessionKeys with integrity {message.integrity!r}")
    return message


class FrameReader:
    """Cuts a byte stream into messages; feed it what was received, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Message]:
        """The messages completed by `chunk`; raises `WireError` on a broken stream."""
        self._buffer += chunk
        out: list[Message] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise WireError(f"a frame of {length} bytes")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            out.append(decode(bytes(self._buffer[_LENGTH.size : end])))
            del self._buffer[:end]
        return out
