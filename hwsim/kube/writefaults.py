"""Faults after a write: the API server applied it, then answers late, or not at all.

A real API server can store a write and lose the answer (a timeout on the way back, a dropped
connection): the client sees an error although the object changed. `KubeApiServer.write_hook`
is called with every applied write (`AppliedWrite`) and may return a `WriteFault`, which the
server acts out before it answers: run `before_answer` (in a worker thread), stay silent for
`hold` seconds, then answer, or close the connection (`drop`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


@dataclass(frozen=True)
class AppliedWrite:
    """A write the store has applied: what was asked and the object as the answer shows it."""

    verb: str  # create, update, patch, delete
    group: str
    resource: str  # plural
    namespace: str
    name: str  # the object's name (for a create: the name it was given)
    subresource: str
    obj: dict[str, Any]  # the answer's body (the stored object; a Status for a delete)


@dataclass(frozen=True)
class WriteFault:
    """What the server does after applying a write, before answering it.

    `before_answer` runs first (in a worker thread: it may block, e.g. to stop a process);
    then `hold` seconds of silence (longer than the client's timeout: the client gives up
    while the write has landed); then the answer, or with `drop` the connection is closed.
    """

    hold: float = 0.0
    drop: bool = False
    before_answer: Callable[[], None] | None = None


# Called on the server's event loop for every applied write: must return quickly.
WriteHook = Callable[[AppliedWrite], WriteFault | None]


async def act_out(request: web.Request, fault: WriteFault) -> bool:
    """Carry out `fault` for `request`; True when the answer must still be sent."""
    if fault.before_answer is not None:
        try:
            await asyncio.to_thread(fault.before_answer)
        except Exception:  # the harness's hook failing must not turn into a 500
            log.exception("write fault: before_answer failed")
    if fault.hold > 0:
        await asyncio.sleep(fault.hold)
    if fault.drop:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return False
    return True
