"""Power backend that runs a ClusterLabs fence agent (fence-agents' `fence_*` programs).

The agent is run once per request, with every option on its standard input in the agents'
own protocol (`name=value` lines, as Pacemaker's fencer passes them): the password never
appears on a command line or in the environment. The agent gets a small environment of its
own (PATH with the sbin directories, LANG, HOME, and the CA bundle when `ca_file` is set),
never ours, and runs in its own process group, which is killed at its deadline (agents such
as fence_ipmilan run ipmitool under them).

Proof of Off is the agent's own `status` read-back: `power_state` reads Off only when the
agent printed `Status: OFF` AND exited 2, as the agent API defines it; `Status: ON` with
exit 0 is On; anything else is an error. The exit code of `off` is never taken for a proof:
`power_off` only requests (the agent's own wait is bounded by `power_timeout`), the caller
reads back with `status` (`nodefence.agent.fencing.power_executor`).

An agent cannot tell us whether the device was silent or refused us ("Unable to
connect/login to fencing device" means either), so its failures are `FenceAgentFailed`,
never `BmcUnreachable`: a fence-agent channel is never skipped in a proof of Off and never
counts towards a watchdog self-fence. An option the agent does not know (it would only warn
and go on) is an error naming the option.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
from dataclasses import dataclass

from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.backends.errors import FenceAgentFailed, FenceError
from nodefence.backends.spec import FenceAgentDevice

AGENT_PATH = "/usr/sbin:/sbin:/usr/bin:/bin:/usr/local/sbin:/usr/local/bin"
# What the agent is told on top of the inventory's options: wait for the state change no
# longer than our own power_timeout, and do not sleep after a request (our read-back paces).
_EXIT_ON, _EXIT_OFF = 0, 2
_STATUS = re.compile(r"^Status: (ON|OFF)\s*$", re.MULTILINE)
_UNKNOWN_OPTION = re.compile(r"Ignoring unknown option '([^'=]*)")
_ERROR_LINE = re.compile(r"^(?:\S+ \S+ )?ERROR:? ?(?:root:)?\s*(.+)$", re.MULTILINE)
_MAX_OUTPUT = 64 * 1024  # an agent's answer is a few lines; more is not read
_KILL_WAIT = 2.0


@dataclass(frozen=True)
class AgentRun:
    """One finished run of an agent: exit status and what it printed (secrets removed)."""

    code: int
    stdout: str
    stderr: str


def agent_input(spec: FenceAgentDevice, action: str) -> str:
    """The agent's standard input for `action` (contains the password: never log it)."""
    lines = {"action": action}
    if spec.address is not None:
        lines["ip"] = spec.address
    if spec.port is not None:
        lines["ipport"] = str(spec.port)
    if spec.username is not None:
        lines["username"] = spec.username
    lines["power_timeout"] = str(max(1, math.ceil(spec.timeouts.power_timeout)))
    lines["power_wait"] = "0"
    lines.update(dict(spec.options))  # the inventory's own options win
    if spec.password is not None:
        lines["password"] = spec.password.reveal()
    return "".join(f"{name}={value}\n" for name, value in lines.items())


def agent_environment(spec: FenceAgentDevice) -> dict[str, str]:
    """The environment the agent runs in: nothing of ours but what it needs."""
    env = {"PATH": AGENT_PATH, "LANG": "C.UTF-8", "PYTHONWARNINGS": "ignore"}
    if os.environ.get("HOME"):
        env["HOME"] = os.environ["HOME"]  # cloud agents read their SDK's config there
    if spec.ca_file:
        env["REQUESTS_CA_BUNDLE"] = env["SSL_CERT_FILE"] = spec.ca_file
    return env


def read_status(run: AgentRun) -> PowerState | None:
    """The power state a `status` run reported, or None when its output and exit status do
    not agree (pure: the agent API says ON is exit 0, OFF is exit 2, with `Status: X`)."""
    found = _STATUS.findall(run.stdout)
    if len(found) != 1:
        return None
    if found[0] == "OFF" and run.code == _EXIT_OFF:
        return PowerState.OFF
    if found[0] == "ON" and run.code == _EXIT_ON:
        return PowerState.ON
    return None


def failure_text(run: AgentRun) -> str:
    """Why a run failed, in the agent's words (its last ERROR line), else its exit status."""
    errors = [str(e).strip() for e in _ERROR_LINE.findall(run.stderr) if str(e).strip()]
    if errors:
        return errors[-1]
    tail = [line for line in run.stderr.splitlines() if line.strip()][-1:]
    return f"exit status {run.code}" + (f" ({tail[0][:200]})" if tail else "")


class FenceAgentBackend(PowerBackend):
    """Power control of one node through a fence agent (see the module doc)."""

    def __init__(self, node: str, spec: FenceAgentDevice) -> None:
        self.node = node
        self.device = spec.name
        self.spec = spec
        self.address = spec.address or os.path.basename(spec.agent)
        self.agent_name = os.path.basename(spec.agent)

    def _error(self, message: str) -> FenceError:
        return FenceAgentFailed(
            message, node=self.node, device=self.device, address=self.address or ""
        )

    async def _run(self, action: str, deadline: float) -> AgentRun:
        """Run the agent for `action` within `deadline` seconds; typed error on any failure
        to run it (the exit status is the caller's to judge)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.spec.agent,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=agent_environment(self.spec),
                start_new_session=True,  # its own process group: killed whole at the deadline
            )
        except OSError as err:
            raise self._error(
                f"cannot run fence agent {self.spec.agent}: {err.strerror or err}"
            ) from None
        try:
            async with asyncio.timeout(deadline):
                out, errout = await proc.communicate(agent_input(self.spec, action).encode())
        except TimeoutError:
            await self._kill(proc)
            raise self._error(
                f"fence agent {self.agent_name} {action}: no result within {deadline:g} s "
                "(killed); check the device and the agent's options"
            ) from None
        except BaseException:
            await self._kill(proc)
            raise
        run = AgentRun(proc.returncode or 0, self._clean(out), self._clean(errout))
        unknown = _UNKNOWN_OPTION.findall(run.stderr)
        if unknown:
            raise self._error(
                f"fence agent {self.agent_name} does not know the option {unknown[0]!r} "
                "(see its metadata: `action=metadata` on its stdin, or its man page)"
            )
        return run

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _KILL_WAIT)

    def _clean(self, raw: bytes) -> str:
        text = raw[:_MAX_OUTPUT].decode("utf-8", "replace")
        secret = self.spec.password.reveal() if self.spec.password is not None else ""
        return text.replace(secret, "***") if secret else text

    def _request_deadline(self) -> float:
        t = self.spec.timeouts
        waited = dict(self.spec.options).get("power_timeout")
        try:
            agent_wait = float(waited) if waited is not None else t.power_timeout
        except ValueError:
            agent_wait = t.power_timeout
        return t.timeout + max(1.0, math.ceil(agent_wait))

    # -- the async interface --------------------------------------------------------------

    async def power_state(self) -> PowerState:
        """The agent's `status`: Off only for `Status: OFF` with exit status 2."""
        run = await self._run("status", self.spec.timeouts.timeout)
        state = read_status(run)
        if state is None:
            if _STATUS.search(run.stdout) is None and run.code not in (_EXIT_ON, _EXIT_OFF):
                raise self._error(f"fence agent {self.agent_name} status: {failure_text(run)}")
            raise self._error(
                f"fence agent {self.agent_name} status: output and exit status {run.code} "
                "disagree; the power state is unknown"
            )
        return state

    async def power_off(self) -> None:
        """The agent's `off` (a request: the proof is a later `status`)."""
        await self._act("off")

    async def power_on(self) -> None:
        """The agent's `on`."""
        await self._act("on")

    async def _act(self, action: str) -> None:
        run = await self._run(action, self._request_deadline())
        if run.code != 0:
            raise self._error(f"fence agent {self.agent_name} {action}: {failure_text(run)}")

    async def check(self) -> CheckResult:
        """A `status` run: it logs in and reads the power, as the agent's `monitor` would."""
        try:
            state = await self.power_state()
        except FenceError as err:
            # The agent cannot say whether the device answered: claim neither.
            return CheckResult(False, False, PowerState.UNKNOWN, False, str(err), err.reason)
        return CheckResult(True, True, state, True, f"fence agent {self.agent_name}")
