"""backends/deadline.py: a blocking BMC library call in a daemon thread, bounded by a deadline.

The caller gets the call's value or its own error; at the deadline it is released with a typed
error naming the node, device and address, while the library call runs on in its thread; the
late answer is dropped without a trace, even once the event loop has closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nodefence.backends.deadline import run_bounded
from nodefence.backends.errors import BmcAuthFailed, BmcTimeout, BmcUnreachable
from tests.support.wait import eventually_blocking

WHERE: dict[str, Any] = {"node": "node-2", "device": "ipmi", "address": "10.0.0.12:623"}


class Blocked:
    """A library call that blocks until `release()`, then returns `value` or raises `error`."""

    def __init__(self, value: object = "late", error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.started = threading.Event()
        self.finished = threading.Event()
        self._release = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self) -> object:
        self.thread = threading.current_thread()
        self.started.set()
        try:
            self._release.wait(30)
            if self.error is not None:
                raise self.error
            return self.value
        finally:
            self.finished.set()

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException | None]]:
    """What any thread raised without catching (threading.excepthook), for the test to check."""
    seen: list[BaseException | None] = []
    before = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        yield seen
    finally:
        threading.excepthook = before


async def test_the_calls_value_is_returned() -> None:
    assert await run_bounded(lambda: 42, timeout=5, what="power status", **WHERE) == 42


async def test_the_calls_own_error_reaches_the_caller_unchanged() -> None:
    failure = BmcAuthFailed("bad password", node="node-2", device="ipmi")

    def fn() -> None:
        raise failure

    with pytest.raises(BmcAuthFailed) as err:
        await run_bounded(fn, timeout=5, what="login", **WHERE)
    assert err.value is failure


async def test_even_a_base_exception_of_the_call_is_handed_over_not_lost() -> None:
    class Stop(BaseException):
        pass

    def fn() -> None:
        raise Stop

    with pytest.raises(Stop):
        await run_bounded(fn, timeout=5, what="power off", **WHERE)


async def test_the_call_runs_in_a_daemon_thread_named_for_the_bmc() -> None:
    seen: list[threading.Thread] = []
    await run_bounded(lambda: seen.append(threading.current_thread()), timeout=5, what="x", **WHERE)
    [thread] = seen
    assert thread is not threading.main_thread()
    assert thread.daemon and thread.name == "bmc:node-2/ipmi"


async def test_an_overrun_releases_the_caller_at_its_deadline_naming_the_bmc() -> None:
    call = Blocked()
    began = time.monotonic()
    try:
        with pytest.raises(BmcTimeout) as err:
            await run_bounded(call, timeout=0.2, what="power off", **WHERE)
        took = time.monotonic() - began
        assert not call.finished.is_set(), "the library call is still running in its thread"
    finally:
        call.release()
    assert 0.2 <= took < 3.0
    assert (err.value.node, err.value.device, err.value.address) == (
        "node-2",
        "ipmi",
        "10.0.0.12:623",
    )
    assert "power off: no answer from the BMC within 0.2 s" in str(err.value)


async def test_an_overrun_before_anything_was_received_is_unreachable_not_a_timeout() -> None:
    call = Blocked()
    try:
        with pytest.raises(BmcUnreachable, match=r"login: no answer from the BMC within 0\.1 s"):
            await run_bounded(
                call, timeout=0.1, what="login", silent_means_unreachable=True, **WHERE
            )
    finally:
        call.release()


@pytest.mark.parametrize(
    "late", [{"value": "on"}, {"error": BmcAuthFailed("late", node="node-2", device="ipmi")}]
)
async def test_a_late_answer_after_the_deadline_is_dropped_without_a_trace(
    late: dict[str, Any], thread_errors: list[BaseException | None]
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    call = Blocked(**late)
    with pytest.raises(BmcTimeout):
        await run_bounded(call, timeout=0.1, what="power status", **WHERE)
    call.release()
    await asyncio.to_thread(call.finished.wait, 10)
    assert call.thread is not None
    await asyncio.to_thread(call.thread.join, 10)
    for _ in range(3):  # let the loop run the late settle callback
        await asyncio.sleep(0)
    assert loop_errors == [] and thread_errors == []


def test_a_late_answer_after_the_loop_has_closed_is_dropped_without_a_trace(
    thread_errors: list[BaseException | None],
) -> None:
    call = Blocked()

    async def give_up() -> None:
        with pytest.raises(BmcTimeout):
            await run_bounded(call, timeout=0.1, what="power status", **WHERE)

    asyncio.run(give_up())  # the loop is closed when this returns
    call.release()
    eventually_blocking("the abandoned call ended", call.finished.is_set)
    assert call.thread is not None
    call.thread.join(10)
    assert not call.thread.is_alive()
    assert thread_errors == []


async def test_calls_overrunning_together_each_release_their_own_caller() -> None:
    calls = [Blocked(value=i) for i in range(3)]
    quick: Callable[[], object] = lambda: "quick"  # noqa: E731 (a call that answers at once)
    try:
        results = await asyncio.gather(
            *(run_bounded(c, timeout=0.2, what="power status", **WHERE) for c in calls),
            run_bounded(quick, timeout=5, what="power status", **WHERE),
            return_exceptions=True,
        )
    finally:
        for c in calls:
            c.release()
    assert [type(r) for r in results[:3]] == [BmcTimeout] * 3
    assert results[3] == "quick"
