"""Run a blocking BMC library call in a worker thread, bounded by a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from backends.errors import BmcTimeout, BmcUnreachable, FenceError

T = TypeVar("T")


async def run_bounded(
    fn: Callable[[], T],
    *,
    timeout: float,
    node: str,
    device: str,
    what: str,
    silent_means_unreachable: bool = False,
) -> T:
    """Run `fn` in a thread; raise a typed error if it does not finish within `timeout` s.

    The thread cannot be killed: a library call that overruns keeps its thread until the
    library's own timers give up, but the caller is released at the deadline. When
    `silent_means_unreachable` is set (nothing was ever received from the BMC, e.g. during
    login), an overrun is reported as `BmcUnreachable`, otherwise as `BmcTimeout`.
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn), timeout)
    except TimeoutError:
        cls: type[FenceError] = BmcUnreachable if silent_means_unreachable else BmcTimeout
        raise cls(
            f"{what}: no answer from the BMC within {timeout:g} s; check the address, port "
            "and that the BMC's network is up",
            node=node,
            device=device,
        ) from None
