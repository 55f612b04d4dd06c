"""The node's watch of its own fencing records and maintenance mark, for the watchdog feeder.

`watch_marks` stops feeding (`nodefence.agent.node.watchdog_rules.FeedPolicy.fenced`) once a fencing
record names this node, folds the Node's `nodefence.io/maintenance=true` mark into the policy, and
keeps the policy in contact through the API server while the broker gives none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from nodefence.agent.node.watchdog_rules import FeedPolicy

log = logging.getLogger("nodefence.watchdog")


ListMarks = Callable[[], Awaitable[list[str]]]
ReadMark = Callable[[], Awaitable[bool]]


class SeenMarks(Protocol):
    """The agent's watches of its own records and Node
    (`nodefence.agent.node.self_watch.NodeWatch`)."""

    def open_marks(self) -> list[str]:
        """Open fencing records of this node the watch has seen."""
        ...

    def maintenance(self) -> bool | None:
        """The Node's `nodefence.io/maintenance=true`, None until the Node was listed."""
        ...

    def subscribe(self) -> asyncio.Event:
        """An event set at every change."""
        ...


async def wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of `events` is set, or `timeout` seconds passed."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # No await here: a coroutine closed unfinished (its task collected when a loop ends)
        # must not suspend again; a cancelled `Event.wait` needs no one to collect it.
        for w in waits:
            w.cancel()


async def _not_marked() -> bool:
    return False


def _apply_mark(policy: FeedPolicy, marked: bool, now: float) -> None:
    was = policy.claim_withdrawn
    policy.maintenance(marked, now)
    if policy.claim_withdrawn != was:
        log.warning(
            "node %s maintenance: %s",
            "in" if marked else "out of",
            "its watchdog claim is withdrawn; once the leader has heard so, long"
            " network work does not reset it"
            if marked
            else "the watchdog guards it again",
        )


async def watch_marks(
    list_marks: ListMarks,
    policy: FeedPolicy,
    interval: float,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    read_mark: ReadMark | None = None,
    seen: SeenMarks | None = None,
) -> None:
    """Stop feeding once a fencing record names this node; keep `policy` in contact through
    the API server while the broker gives none.

    `list_marks()` reads the names of unfinished fencing records of this node from the API
    (raising on any failure); an empty answer is contact, stamped with the moment the read
    started. With `seen` (the agent's watches): a record the watch shows stops feeding at once,
    the maintenance mark is the watched Node's, and the API is read only while no heartbeat
    echo gave contact for `interval` (a watch that says nothing proves nothing: the reads stay
    the contact). Without it: the records are read every `interval`, with (`read_mark`) the
    Node's maintenance mark, which counts only together with such an answer.
    """
    changed = seen.subscribe() if seen is not None else None
    # `stop` sets `changed` too, so each wait below is one wait in this task: two tasks per
    # wait (`wait_any`) were most of what a quiet node's watch cost.
    stopping = asyncio.ensure_future(stop.wait()) if changed is not None else None
    if stopping is not None and changed is not None:
        stopping.add_done_callback(lambda _: changed.set())
    try:
        await _watch(list_marks, policy, interval, stop, clock, read_mark, seen, changed)
    finally:
        if stopping is not None:
            stopping.cancel()


async def _watch(
    list_marks: ListMarks,
    policy: FeedPolicy,
    interval: float,
    stop: asyncio.Event,
    clock: Callable[[], float],
    read_mark: ReadMark | None,
    seen: SeenMarks | None,
    changed: asyncio.Event | None,
) -> None:
    while not stop.is_set() and not policy.stopped:
        if seen is not None:
            marks = seen.open_marks()
            if marks:
                policy.fenced(", ".join(marks))
                log.critical("the leader is fencing this node (%s)", ", ".join(marks))
                return
            marked = seen.maintenance()
            if marked is not None:
                _apply_mark(policy, marked, clock())
        last = policy.last_contact
        if seen is None or last is None or clock() - last >= interval:
            started = clock()
            try:
                async with asyncio.timeout(interval * 2):
                    marked = await (read_mark or _not_marked)() if seen is None else None
                async with asyncio.timeout(interval * 2):
                    marks = await list_marks()
            except Exception as err:  # any failure is "no contact"; the reason is logged
                log.debug("API check failed: %s", err)
            else:
                if marks:
                    policy.fenced(", ".join(sorted(marks)))
                    log.critical("the leader is fencing this node (%s)", ", ".join(marks))
                    return
                policy.contact(started)
                if read_mark is not None and marked is not None:
                    _apply_mark(policy, marked, clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await (stop if changed is None else changed).wait()
        if changed is not None:
            changed.clear()
