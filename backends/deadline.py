"""Run a blocking BMC library call in a worker thread, bounded by a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from nodefence.backends.errors import BmcTimeout, BmcUnreachable, FenceError

T = TypeVar("T")


def _settle(fut: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up at its deadline; drop the late answer
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)  # type: ignore[arg-type]


async def run_bounded(
    fn: Callable[[], T],
    *,
    timeout: float,
    node: str,
    device: str,
    what: str,
    silent_means_unreachable: bool = False,
    address: str = "",
) -> T:
    """Run `fn` in a daemon thread; raise a typed error if it does not finish in `timeout` s.

    A thread cannot be killed: a library call that overruns keeps its thread until the
    library's own timers give up, but the caller is released at the deadline, and because
    the thread is a daemon it never holds up the exit of a short-lived command (asyncio's
    default executor would join it at exit). When `silent_means_unreachable` is set (nothing
    was ever received from the BMC, e.g. during login), an overrun is reported as
    `BmcUnreachable`, otherwise as `BmcTimeout`. `address` names the BMC in that error.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = fn()
        except BaseException as exc:  # handed over to the awaiting caller, not swallowed
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(_settle, fut, value, error)

    threading.Thread(target=work, name=f"bmc:{node}/{device}", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        cls: type[FenceError] = BmcUnreachable if silent_means_unreachable else BmcTimeout
        raise cls(
            f"{what}: no answer from the BMC within {timeout:g} s; check the address, port "
            "and that the BMC's network is up",
            node=node,
            device=device,
            address=address,
        ) from None
