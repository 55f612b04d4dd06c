"""Fuzzing the power backends with malformed BMC answers, over real sockets on 127.0.0.1.

The hwsim emulators serve damaged answers chosen by hypothesis (`RedfishBmc.tamper`,
`IpmiBmc.tamper`); the real backends, built through `nodefence.backends.registry`, must:
- read power Off only when the BMC said Off in a well-formed answer (never a false Off),
- answer within their timeout, and otherwise raise a `FenceError` naming the BMC's address,
- claim a power-off request succeeded only when the BMC accepted it,
- keep working once the BMC behaves again (no library thread or session left broken).
One emulator of each kind serves the whole module; each example gets a fresh backend. The IPMI
cases are in tests/support/ipmi_fuzz_cases.py and run in a child process (its docstring says why).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodefence.backends.base import PowerBackend, PowerState
from nodefence.backends.errors import BmcProtocolError, FenceError
from nodefence.backends.registry import build_backend
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, RedfishDevice, Secret
from nodefence.hwsim.ipmi import IpmiBmc
from nodefence.hwsim.loop_thread import LoopThread
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import RawAnswer, RedfishBmc
from tests.conftest import REPO

T = TypeVar("T")
USER, PASSWORD = "admin", "fuzz-Pa55"
TIMEOUT = 1.0  # the Redfish backend's per-call deadline
IPMI_TIMEOUT = 0.8  # the IPMI backend's (dropped answers cost this much per example)
SLACK = 3.0  # how much later than its deadline a call may return (threads, loaded CI)
SYSTEM = "/redfish/v1/Systems/node-1"

SOCKETS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- one emulator of each kind for the module, on a private event loop ---------------------


@dataclass
class Lab:
    """The emulators, the machine they serve and the loop they run on."""

    loop: LoopThread
    machine: SimMachine
    ipmi: IpmiBmc
    redfish: RedfishBmc

    def run(self, coro: Coroutine[Any, Any, T], within: float = TIMEOUT + 10) -> T:
        return self.loop.run(coro, within)

    def reset(self) -> None:
        """Machine on, no tampering: the truth every example starts from."""
        self.ipmi.tamper = None
        self.redfish.tamper = None
        self.machine.request_on()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    loop = LoopThread("fuzz-bmc")
    machine = SimMachine("node-1", "6e1f0f2a-0000-4000-8000-00000000f022")
    ipmi = IpmiBmc(machine, USER, PASSWORD, max_sessions=64)
    redfish = RedfishBmc([machine], USER, PASSWORD)
    try:
        loop.run(ipmi.start())
        loop.run(redfish.start())
        yield Lab(loop, machine, ipmi, redfish)
    finally:
        loop.run(ipmi.stop())
        loop.run(redfish.stop())
        loop.close()


def ipmi_backend(lab: Lab, cipher: int = 17) -> PowerBackend:
    spec = IpmiDevice(
        "ipmi",
        "127.0.0.1",
        USER,
        Secret(PASSWORD),
        port=lab.ipmi.port,
        cipher=cipher,
        timeouts=DeviceTimeouts(timeout=IPMI_TIMEOUT),
    )
    return build_backend("node-1", spec)


def redfish_backend(lab: Lab, auth: str = "auto") -> PowerBackend:
    spec = RedfishDevice(
        "redfish",
        "127.0.0.1",
        USER,
        Secret(PASSWORD),
        port=lab.redfish.port,
        scheme="http",
        auth=auth,  # type: ignore[arg-type]
        timeouts=DeviceTimeouts(timeout=TIMEOUT),
    )
    return build_backend("node-1", spec)


@dataclass
class Outcome:
    """What one backend call did: its result or its error, and how long it took."""

    value: Any = None
    error: FenceError | None = None
    elapsed: float = 0.0


def call(lab: Lab, backend: PowerBackend, what: str) -> Outcome:
    """Run `backend.<what>()`; a `FenceError` is an outcome, anything else fails the test."""

    async def go() -> Outcome:
        started = time.monotonic()
        out = Outcome()
        try:
            out.value = await getattr(backend, what)()
        except FenceError as err:
            out.error = err
        out.elapsed = time.monotonic() - started
        return out

    out = lab.run(go())
    timeout = backend.spec.timeouts.timeout  # type: ignore[attr-defined]
    assert out.elapsed < timeout + SLACK, f"{what} took {out.elapsed:.2f} s"
    if out.error is not None:
        text = str(out.error)
        address = getattr(backend, "address", None) or backend.spec.base_url  # type: ignore[attr-defined]
        assert address in text, f"the error does not name the BMC {address}: {text}"
        assert PASSWORD not in text
    return out


def close(lab: Lab, backend: PowerBackend) -> None:
    lab.reset()
    lab.run(backend.close())


def call_once(lab: Lab, backend: PowerBackend, what: str) -> Outcome:
    """`call` on a fresh `backend`, closed after (the BMC's damage lifted first)."""
    try:
        return call(lab, backend, what)
    finally:
        close(lab, backend)


def still_healthy(lab: Lab, make: Callable[[Lab], PowerBackend]) -> None:
    """Once the BMC behaves again, fresh backends read the truth within a few seconds.

    A Redfish call abandoned at its deadline may still run in its library's thread (and even
    complete a power-off late, which is then the truth; an IPMI one cannot, its worker process
    is killed): recovery is awaited with a deadline, and a read is judged against the machine
    after it.
    """
    lab.reset()
    deadline = time.monotonic() + 6.0
    while True:
        backend = make(lab)
        try:
            out = call(lab, backend, "power_state")
            truth = PowerState.ON if lab.machine.power_state() == "on" else PowerState.OFF
        finally:
            close(lab, backend)
        if out.error is None:
            assert out.value is PowerState.ON or truth is PowerState.OFF, (out, truth)
            return
        assert time.monotonic() < deadline, (
            f"no recovery once the BMC behaved: {out.error}; {lab.ipmi.stats}, "
            f"{lab.ipmi.session_count} sessions"
        )


# --- Redfish: damaged HTTP answers ---------------------------------------------------------


def system_doc(power: object = "On", drop: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@odata.id": SYSTEM,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "node-1",
        "Name": "node-1",
        "PowerState": power,
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": f"{SYSTEM}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff"],
            }
        },
    }
    if drop:
        del doc["PowerState"]
    return doc


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


GOOD_SYSTEM = body_of(system_doc())

# PowerState values that are not a Redfish "Off" (the only one that may read as OFF).
not_off = st.one_of(
    st.sampled_from(
        [
            5,
            0,
            None,
            True,
            False,
            "off",
            "OFF",
            "Offline",
            " Off",
            "Off ",
            "Of",
            "",
            "Unknown",
            ["Off"],
            [["Off"]],
            {"Off": True},
            {"PowerState": "Off"},
            0.0,
            "On\u0000Off",
        ]
    ),
    st.text(max_size=10).filter(lambda t: t != "Off"),
    st.integers(),
)

bodies = st.one_of(
    not_off.map(lambda v: body_of(system_doc(v))),
    st.just(body_of(system_doc(drop=True))),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'"Off"',
            b"[" * 50000 + b"]" * 50000,
            b'{"PowerState": "O\xffff"}',  # a lenient decoder reads "Off"
            b'{"PowerState": "On", "PowerState": "Off"}',  # duplicate keys: last one wins
            b'{"PowerState": "Off"',  # truncated JSON
            b'{"PowerState": Off}',
            b"<html><body>Off</body></html>",
            b"\xef\xbb\xbf" + GOOD_SYSTEM.replace(b'"On"', b'"Off"')[:-1],
            GOOD_SYSTEM.replace(b'"On"', b'"Off"').decode().encode("utf-16")[:-2],
        ]
    ),
    st.binary(max_size=64),
    st.integers(1, len(GOOD_SYSTEM) - 1).map(lambda n: GOOD_SYSTEM.replace(b'"On"', b'"Off"')[:n]),
)

STATUS_LINES = [b"HTTP/1.1 200", b"HTTP/1.1 2000 OK", b"garbage", b"HTTP/9.9 200 OK", b""]


@dataclass(frozen=True)
class HttpDamage:
    """One raw answer and the request it replaces."""

    stage: str  # which request is answered with it
    answer: RawAnswer
    note: str

    def intact(self) -> bool:
        """A complete, timely 2xx answer: a reset answered so was accepted by the BMC."""
        a = self.answer
        body = b"".join(a.chunks())
        complete = a.content_length is None or a.content_length == len(body)
        return (
            200 <= a.status < 300
            and a.status_line in (None, b"HTTP/1.1 200")  # no reason phrase is still valid
            and complete
            and a.drip * max(1, len(list(a.chunks()))) < TIMEOUT / 2
        )


@st.composite
def http_damage(draw: st.DrawFn, stages: list[str]) -> HttpDamage:
    stage = draw(st.sampled_from(stages))
    kind = draw(
        st.sampled_from(
            ["body", "status", "truncated", "no_length", "drip", "redirect", "type", "line"]
        )
    )
    body = draw(bodies)
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    if kind == "body":
        answer = RawAnswer(body=body, content_length=len(body))
    elif kind == "status":
        status = draw(st.sampled_from([201, 202, 204, 301, 400, 401, 403, 404, 409, 500, 503]))
        answer = RawAnswer(status=status, body=body, content_length=len(body))
    elif kind == "truncated":
        extra = draw(st.integers(1, 10**6))
        answer = RawAnswer(
            body=GOOD_SYSTEM[: len(GOOD_SYSTEM) // 2], content_length=len(GOOD_SYSTEM) + extra
        )
    elif kind == "no_length":
        answer = RawAnswer(body=body, content_length=None)
    elif kind == "drip":
        chunks = [GOOD_SYSTEM[i : i + 16] for i in range(0, len(GOOD_SYSTEM), 16)]
        answer = RawAnswer(body=chunks, content_length=len(GOOD_SYSTEM), drip=0.25)
    elif kind == "redirect":
        target = draw(st.sampled_from(["self", SYSTEM, "/redfish/v1/", "http://127.0.0.1:9/x"]))
        status = draw(st.sampled_from([301, 302, 303, 307, 308]))
        where = "{self}" if target == "self" else target
        answer = RawAnswer(status=status, headers=(*headers, ("Location", where)), content_length=0)
    elif kind == "type":
        ctype = draw(st.sampled_from(["text/html", "application/octet-stream", "", "image/png"]))
        answer = RawAnswer(headers=(("Content-Type", ctype),), body=body, content_length=len(body))
    else:
        line = draw(st.sampled_from(STATUS_LINES))
        answer = RawAnswer(status_line=line, body=GOOD_SYSTEM, content_length=len(GOOD_SYSTEM))
    return HttpDamage(stage, answer, f"{kind} on {stage}")


def matches(stage: str, method: str, path: str) -> bool:
    path = path.split("?")[0].rstrip("/")
    if stage == "root":
        return method == "GET" and path == "/redfish/v1"
    if stage == "login":
        return method == "POST" and path.endswith("/Sessions")
    if stage == "systems":
        return method == "GET" and path == "/redfish/v1/Systems"
    if stage == "system":
        return method == "GET" and path == SYSTEM
    return method == "POST" and path.endswith("ComputerSystem.Reset")  # "reset"


def install(lab: Lab, damage: HttpDamage) -> list[str]:
    """Answer the damaged stage's requests with the raw answer; returns what was hit."""
    hits: list[str] = []

    def hook(method: str, path: str) -> RawAnswer | None:
        if not matches(damage.stage, method, path):
            return None
        hits.append(f"{method} {path}")
        answer = damage.answer
        if any(v == "{self}" for _, v in answer.headers):
            headers = tuple((k, path if v == "{self}" else v) for k, v in answer.headers)
            answer = RawAnswer(
                status=answer.status, headers=headers, content_length=answer.content_length
            )
        return answer

    lab.redfish.tamper = hook
    return hits


@SOCKETS
@given(
    damage=http_damage(["root", "login", "systems", "system"]),
    auth=st.sampled_from(["auto", "session", "basic"]),
)
def test_redfish_status_never_reads_off_from_a_damaged_answer(
    lab: Lab, damage: HttpDamage, auth: str
) -> None:
    lab.reset()
    install(lab, damage)
    out = call_once(lab, redfish_backend(lab, auth), "power_state")
    if out.error is None:
        assert out.value is PowerState.ON, f"{damage.note}: read {out.value}"
    still_healthy(lab, redfish_backend)


@SOCKETS
@given(damage=http_damage(["system", "reset"]))
def test_redfish_power_off_succeeds_only_when_the_bmc_accepted(
    lab: Lab, damage: HttpDamage
) -> None:
    lab.reset()
    hits = install(lab, damage)
    backend = redfish_backend(lab)
    try:
        out = call(lab, backend, "power_off")
        off = lab.machine.power_state() == "off"
    finally:
        close(lab, backend)
    if out.error is None:
        accepted = damage.stage == "reset" and bool(hits) and damage.intact()
        assert off or accepted, f"{damage.note}: power-off claimed, {hits}, machine on"
    still_healthy(lab, redfish_backend)


@pytest.mark.parametrize("declared", [True, False])
def test_redfish_a_huge_answer_is_refused_without_reading_it_all(lab: Lab, declared: bool) -> None:
    size, chunk = 50 << 20, b" " * (64 << 10)
    sent = [0]

    def huge() -> Iterator[bytes]:
        yield b'{"PowerState": "On", "Pad": "'
        while sent[0] < size:
            sent[0] += len(chunk)
            yield chunk
        yield b'"}'

    lab.reset()
    install(
        lab,
        HttpDamage(
            "system", RawAnswer(body=huge(), content_length=size if declared else None), "huge"
        ),
    )
    out = call_once(lab, redfish_backend(lab), "power_state")
    assert isinstance(out.error, BmcProtocolError) and "limit" in out.error.message, out
    assert sent[0] < 20 << 20, f"the backend let the BMC send {sent[0] >> 20} MB"
    still_healthy(lab, redfish_backend)


def test_redfish_a_post_redirected_into_a_get_is_not_an_accepted_reset(lab: Lab) -> None:
    lab.reset()
    answer = RawAnswer(status=302, headers=(("Location", SYSTEM),), content_length=0)
    install(lab, HttpDamage("reset", answer, "302 to the system"))
    out = call_once(lab, redfish_backend(lab), "power_off")
    assert isinstance(out.error, BmcProtocolError) and "redirected" in out.error.message, out
    assert lab.machine.power_state() == "on"


@pytest.mark.parametrize(
    "body",
    [
        b'{"PowerState": "O\xffff"}',
        b'{"PowerState": "On", "PowerState": "Off"}',
    ],
)
def test_redfish_an_ambiguous_off_is_an_error(lab: Lab, body: bytes) -> None:
    lab.reset()
    install(lab, HttpDamage("system", RawAnswer(body=body, content_length=len(body)), "lenient"))
    out = call_once(lab, redfish_backend(lab), "power_state")
    assert isinstance(out.error, BmcProtocolError), out


def test_the_ipmi_cases_in_their_own_process() -> None:
    """tests/support/ipmi_fuzz_cases.py in a child pytest (see its docstring for why)."""
    cases = REPO / "tests" / "support" / "ipmi_fuzz_cases.py"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
