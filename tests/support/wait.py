"""Wait for a condition with a deadline: the one way tests synchronise (never a bare sleep).

`eventually` polls on the event loop (a coroutine), `eventually_blocking` in the calling thread
(tests without a loop, or a loop that must not run meanwhile). Both return the first truthy
value of `check()` and fail the test, naming `what`, when `timeout` seconds pass without one.
`throughout` is the bounded watch for a negative: `check()` must hold at every look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import pytest

T = TypeVar("T")


class Deadline:
    """`within` seconds from now on the monotonic clock."""

    def __init__(self, within: float) -> None:
        self.at = time.monotonic() + within

    def passed(self) -> bool:
        return time.monotonic() > self.at


class _Poll(Generic[T]):
    """One look at `check()` per call: its value when truthy, None while the deadline holds,
    a failed test ("WHAT: not within N s") once it has passed."""

    def __init__(self, what: str, check: Callable[[], T | None], timeout: float) -> None:
        self.what = what
        self.check = check
        self.timeout = timeout
        self.deadline = Deadline(timeout)

    def look(self) -> T | None:
        value = self.check()
        if value:
            return value
        if self.deadline.passed():
            pytest.fail(f"{self.what}: not within {self.timeout:g} s")
        return None


async def eventually(
    what: str, check: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """The first truthy `check()`, polled every `interval` on the event loop; fails the test
    ("WHAT: not within N s") once `timeout` seconds have passed."""
    poll = _Poll(what, check, timeout)
    while True:
        value = poll.look()
        if value is not None:
            return value
        await asyncio.sleep(interval)


def eventually_blocking(
    what: str, check: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """`eventually` for a caller without an event loop: polls in this thread."""
    poll = _Poll(what, check, timeout)
    while True:
        value = poll.look()
        if value is not None:
            return value
        time.sleep(interval)


async def throughout(
    what: str, check: Callable[[], object], seconds: float, interval: float = 0.02
) -> None:
    """`check()` holds at every look during the next `seconds` and at the end (something that
    must not happen, watched for the time it would take to happen); fails naming `what`."""
    deadline = Deadline(seconds)
    while not deadline.passed():
        assert check(), what
        await asyncio.sleep(interval)
    assert check(), what
