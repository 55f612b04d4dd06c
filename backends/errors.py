"""The typed errors every power backend raises.

Each error carries the node and device it concerns and a message that says what happened and
what an operator can do. Messages never contain a secret.
"""

from __future__ import annotations


class FenceError(Exception):
    """Base of every power/fencing failure; `node`, `device` and the BMC's `address`
    (`host:port` or URL) say where it happened."""

    reason = "error"

    def __init__(
        self, message: str, *, node: str = "", device: str = "", address: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.device = device
        self.address = address

    def __str__(self) -> str:
        where = " ".join(
            p
            for p in (
                f"node={self.node}" if self.node else "",
                f"device={self.device}" if self.device else "",
                f"bmc={self.address}" if self.address else "",
            )
            if p
        )
        return f"{self.message} ({where})" if where else self.message


class BmcUnreachable(FenceError):
    """The BMC did not answer at all (no route, refused, silent).

    Only this error says "no answer": a channel that raises it cannot contradict a proof of
    Off, and a node whose every channel raises it may be taken as self-fenced by its watchdog.
    Anything the BMC said, however broken, is one of the other errors.
    """

    reason = "unreachable"


class BmcTlsError(FenceError):
    """The BMC answered, but no trusted TLS channel to it could be set up (certificate not
    trusted or not for this address, handshake refused): a configuration problem, never
    "unreachable"."""

    reason = "tls"


class BmcAuthFailed(FenceError):
    """The BMC answered and refused the credentials."""

    reason = "auth_failed"


class BmcUnsupported(FenceError):
    """The BMC does not offer what was asked (no ForceOff, no such system, privilege too low)."""

    reason = "unsupported"


class BmcTimeout(FenceError):
    """The BMC started answering but an operation did not finish within its deadline."""

    reason = "timeout"


class BmcProtocolError(FenceError):
    """The BMC answered with something we cannot interpret (malformed, error code)."""

    reason = "protocol"


class FenceAgentFailed(FenceError):
    """A fence agent (fence-agents' `fence_*` program) failed or answered something we cannot
    read. It cannot tell silence from refusal, so it is never "unreachable"."""

    reason = "agent_failed"


class PowerVerifyFailed(FenceError):
    """The power state was not read back as asked within `power_timeout`."""

    reason = "verify_failed"
