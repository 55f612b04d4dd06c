"""IPMI cases of the BMC fuzzing (see tests/backends/test_fuzz_bmc.py), run in their own process.

tests/backends/test_fuzz_bmc.py runs this file in a child pytest. That began as a workaround: pyghmi
keeps process-wide session state, and calls the damaged examples abandoned at their deadline
lingered in it, stalling other tests' IPMI sessions. The backend now runs pyghmi in a worker
process per backend and kills it when a call is abandoned (backends/ipmi/backend.py;
tests/backends/test_backend_ipmi.py shows other sessions are not stalled), so nothing lingers; the
child pytest stays only because this module cannot be collected on its own name. Run it
alone with `python -m pytest tests/support/ipmi_fuzz_cases.py`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from nodefence.backends.base import PowerState
from nodefence.backends.errors import BmcProtocolError
from nodefence.hwsim.ipmi import IpmiTamper
from nodefence.hwsim.ipmi.packets import IpmiRequest, PayloadType, checksum
from tests.backends.test_fuzz_bmc import (
    SOCKETS,
    Lab,
    call,
    call_once,
    close,
    ipmi_backend,
    lab,
    still_healthy,
)

__all__ = ["lab"]  # the module's emulators, a fixture


# --- IPMI: damaged answer messages (well protected on the wire, wrong inside) ----------------

_NETFN_CHASSIS, _GET_STATUS, _CONTROL = 0x00, 0x01, 0x02


def frame(head: bytes, body: bytes) -> bytes:
    """An IPMI response message with correct checksums: head (2 bytes) and body."""
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])


def parts(message: bytes) -> tuple[bytes, bytes]:
    """The head (rqAddr, netFn/LUN) and the body (rsAddr, rqSeq/LUN, cmd, code, data...)."""
    return message[0:2], message[3:-1]


@dataclass(frozen=True)
class MessageDamage:
    """How one IPMI response message is damaged (applied by the emulator)."""

    kind: str
    data: bytes = b""
    number: int = 0

    def apply(self, message: bytes) -> bytes:
        head, body = parts(message)
        if self.kind == "data":  # any data, checksums right, completion code 0
            return frame(head, body[:3] + b"\x00" + self.data)
        if self.kind == "extra":  # the right data and more
            return frame(head, body + self.data)
        if self.kind == "code":  # an error completion code, with data that reads Off
            return frame(head, body[:3] + bytes([self.number]) + b"\x00\x00\x00")
        if self.kind == "head_checksum":
            return head + bytes([(checksum(head) + self.number) & 0xFF]) + message[3:]
        if self.kind == "body_checksum":
            return message[:-1] + bytes([(message[-1] + self.number) & 0xFF])
        if self.kind == "off_bad_checksum":  # "Off" with a broken body checksum
            off = frame(head, body[:4] + b"\x00" + body[5:])
            return off[:-1] + bytes([(off[-1] + self.number) & 0xFF])
        if self.kind == "command":
            return frame(head, body[:2] + bytes([self.number]) + body[3:])
        if self.kind == "sequence":
            return frame(head, body[:1] + bytes([self.number]) + body[2:])
        if self.kind == "netfn":
            return frame(head[:1] + bytes([self.number]), body)
        if self.kind == "truncate":
            return message[: self.number % len(message)]
        return self.data  # "random"


message_damage = st.one_of(
    st.builds(MessageDamage, st.just("data"), st.binary(max_size=6)),
    st.builds(MessageDamage, st.just("extra"), st.binary(min_size=1, max_size=6)),
    st.builds(MessageDamage, st.just("code"), number=st.integers(1, 255)),
    st.builds(
        MessageDamage,
        st.sampled_from(["head_checksum", "body_checksum"]),
        number=st.integers(1, 255),
    ),
    st.builds(MessageDamage, st.just("off_bad_checksum"), number=st.integers(1, 255)),
    st.builds(
        MessageDamage, st.sampled_from(["command", "sequence", "netfn"]), number=st.integers(0, 255)
    ),
    st.builds(MessageDamage, st.just("truncate"), number=st.integers(0, 64)),
    st.builds(MessageDamage, st.just("random"), st.binary(max_size=24)),
)


def expected_reading(original: bytes, damaged: bytes) -> PowerState | None:
    """What a correct console reads from a damaged Get Chassis Status answer (None: error).

    Only a well-formed answer to the very request (checksums, netFn, sequence, command),
    completion code 0 and the three mandatory data bytes gives a state: bit 0 of byte 1.
    """
    ok = _well_formed_answer(original, damaged)
    if not ok or len(damaged) < 7 + 1 + 3:
        return None
    return PowerState.ON if damaged[7] & 0x01 else PowerState.OFF


def _well_formed_answer(original: bytes, damaged: bytes) -> bool:
    if len(damaged) < 8 or sum(damaged[0:3]) & 0xFF or sum(damaged[3:]) & 0xFF:
        return False
    same = (damaged[1] >> 2, damaged[4] >> 2, damaged[5]) == (
        original[1] >> 2,
        original[4] >> 2,
        original[5],
    )
    return same and damaged[6] == 0


def on_chassis(command: int) -> Callable[[IpmiRequest], bool]:
    return lambda r: (r.netfn, r.command) == (_NETFN_CHASSIS, command)


def damage_answers(lab: Lab, damage: MessageDamage, command: int) -> list[tuple[bytes, bytes]]:
    """From now on the BMC's answers to chassis `command` suffer `damage`; returns the list of
    (answer, damaged answer) it fills as they go out."""
    seen: list[tuple[bytes, bytes]] = []

    def mangle(request: IpmiRequest, message: bytes) -> bytes:
        damaged = damage.apply(message)
        seen.append((message, damaged))
        return damaged

    lab.reset()
    lab.ipmi.tamper = IpmiTamper(message=mangle, applies=on_chassis(command))
    return seen


def test_ipmi_a_short_chassis_status_is_an_error_not_off(lab: Lab) -> None:
    lab.reset()
    damage = MessageDamage("data", b"\x00")
    lab.ipmi.tamper = IpmiTamper(
        message=lambda r, m: damage.apply(m), applies=on_chassis(_GET_STATUS)
    )
    out = call_once(lab, ipmi_backend(lab), "power_state")
    assert isinstance(out.error, BmcProtocolError) and "1 data byte" in out.error.message, out


def test_ipmi_an_off_with_a_bad_checksum_is_an_error_not_off(lab: Lab) -> None:
    lab.reset()
    damage = MessageDamage("off_bad_checksum", number=1)
    lab.ipmi.tamper = IpmiTamper(
        message=lambda r, m: damage.apply(m), applies=on_chassis(_GET_STATUS)
    )
    out = call_once(lab, ipmi_backend(lab), "power_state")
    assert isinstance(out.error, BmcProtocolError) and "checksum" in out.error.message, out


@settings(SOCKETS, max_examples=25)
@given(damage=message_damage, cipher=st.sampled_from([3, 17]))
def test_ipmi_status_reads_off_only_from_a_well_formed_off(
    lab: Lab, damage: MessageDamage, cipher: int
) -> None:
    seen = damage_answers(lab, damage, _GET_STATUS)
    out = call_once(lab, ipmi_backend(lab, cipher), "power_state")
    if not seen:  # the login itself missed its deadline (busy machine): nothing to judge
        assert out.error is not None
        return
    want = expected_reading(*seen[0])
    if want is None:
        assert out.error is not None, f"read {out.value} from a malformed answer {seen[0][1].hex()}"
    else:
        assert out.error is None and out.value is want, (out, seen[0][1].hex())


@settings(SOCKETS, max_examples=25)
@given(damage=message_damage)
def test_ipmi_power_off_succeeds_only_when_the_bmc_accepted(
    lab: Lab, damage: MessageDamage
) -> None:
    seen = damage_answers(lab, damage, _CONTROL)
    out = call_once(lab, ipmi_backend(lab), "power_off")
    if not seen:  # the login itself missed its deadline (busy machine): nothing to judge
        assert out.error is not None
        return
    if not _well_formed_answer(*seen[0]):
        assert out.error is not None, f"power-off accepted from {seen[0][1].hex()}"
    else:
        assert out.error is None, out


# --- IPMI: damaged datagrams (truncated, flipped, random, wrong session id, dropped) --------


@dataclass(frozen=True)
class WireDamage:
    """How one datagram is damaged on the wire."""

    kind: str
    data: bytes = b""
    number: int = 0

    def apply(self, datagram: bytes) -> bytes | None:
        if self.kind == "truncate":
            return datagram[: self.number % len(datagram)] or b"\x06"
        if self.kind == "flip":
            i = self.number % len(datagram)
            return datagram[:i] + bytes([datagram[i] ^ (self.data[0] or 1)]) + datagram[i + 1 :]
        if self.kind == "session_id":
            return datagram[:6] + struct.pack("<I", self.number) + datagram[10:]
        if self.kind == "length":  # the RMCP+ payload length field
            return datagram[:14] + struct.pack("<H", self.number & 0xFFFF) + datagram[16:]
        if self.kind == "append":
            return datagram + self.data
        if self.kind == "drop":
            return None
        return self.data or b"\x00"  # "random"


wire_damage = st.one_of(
    st.builds(WireDamage, st.just("truncate"), number=st.integers(0, 200)),
    st.builds(WireDamage, st.just("flip"), st.binary(min_size=1, max_size=1), st.integers(0, 200)),
    st.builds(WireDamage, st.just("session_id"), number=st.integers(0, 2**32 - 1)),
    st.builds(WireDamage, st.just("length"), number=st.integers(0, 0xFFFF)),
    st.builds(WireDamage, st.just("append"), st.binary(min_size=1, max_size=40)),
    st.builds(WireDamage, st.just("drop")),
    st.builds(WireDamage, st.just("random"), st.binary(min_size=1, max_size=80)),
)


@settings(SOCKETS, max_examples=25)
@given(
    damage=wire_damage,
    stage=st.sampled_from(["status", "off", "open_session", "rakp2", "rakp4"]),
)
def test_ipmi_damaged_datagrams_never_read_off(lab: Lab, damage: WireDamage, stage: str) -> None:
    lab.reset()
    if stage in ("status", "off"):
        command = _GET_STATUS if stage == "status" else _CONTROL
        lab.ipmi.tamper = IpmiTamper(
            datagram=lambda r, d: damage.apply(d), applies=on_chassis(command)
        )
    else:
        wanted = {
            "open_session": PayloadType.OPEN_SESSION_RESPONSE,
            "rakp2": PayloadType.RAKP2,
            "rakp4": PayloadType.RAKP4,
        }[stage]
        lab.ipmi.tamper = IpmiTamper(
            handshake=lambda t, d: damage.apply(d) if t == wanted else d,
            applies=lambda r: False,
        )
    backend = ipmi_backend(lab)
    changes = lab.machine.power_changes
    try:
        out = call(lab, backend, "power_off" if stage == "off" else "power_state")
    finally:
        close(lab, backend)
    # No earlier example's power-off can land late (its worker was killed when the example
    # gave up on it), so every read the backend accepted must be the machine's On.
    if stage != "off" and out.error is None:
        assert lab.machine.power_changes == changes, "a power change nobody asked for"
        assert out.value is PowerState.ON, f"{damage} made the machine read {out.value}"


# Once wedged for good by pyghmi's lock-order deadlock (two sessions timing out and resending
# at once); one lock for both of its session tables fixed it (backends/ipmi/console.py).
@settings(SOCKETS, max_examples=12)
@given(damage=wire_damage, command=st.sampled_from([_GET_STATUS, _CONTROL]))
def test_ipmi_console_recovers_once_the_bmc_behaves(
    lab: Lab, damage: WireDamage, command: int
) -> None:
    lab.reset()
    lab.ipmi.tamper = IpmiTamper(datagram=lambda r, d: damage.apply(d), applies=on_chassis(command))
    backend = ipmi_backend(lab)
    try:
        call(lab, backend, "power_state" if command == _GET_STATUS else "power_off")
    finally:
        close(lab, backend)
    still_healthy(lab, ipmi_backend)
