"""Counters of what one emulated BMC received and did, for tests and for logs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BmcStats:
    """Per-BMC counters; a datagram received lands in at most one outcome counter.

    Outcomes: `answered`, `unreachable_drops`, `malformed`, `unsupported`, `unknown_session`,
    `bad_integrity`, `replayed`, `unanswered` (a console aborting its RAKP exchange),
    `internal_errors`. A datagram delayed by the `slow` fault counts when it is handled, and
    in no outcome if the BMC stops first.
    """

    received: int = 0
    answered: int = 0
    unreachable_drops: int = 0  # dropped because of the `unreachable` fault
    malformed: int = 0  # not RMCP / IPMI, truncated, bad checksum, bad pad
    unsupported: int = 0  # well formed but not spoken here: IPMI 1.5 sessions, SOL, OEM
    unknown_session: int = 0  # session packet for no active session
    bad_integrity: int = 0  # wrong auth code, or unsigned / unencrypted in a secure session
    replayed: int = 0  # session sequence number reused or too old
    unanswered: int = 0  # well formed, deliberately not answered (RAKP 3 with an error status)
    internal_errors: int = 0  # a bug in the emulator; logged with its traceback
    logins: int = 0  # sessions that became active
    login_refusals: int = 0  # open session / RAKP answers with a non-zero status
    resets: int = 0  # hard resets of a powered machine, which stays on
