"""The two changes nodefence makes to pyghmi's session module, applied by `apply()` only.

The IPMI worker process (`nodefence.backends.ipmi.worker`) calls `apply()` once, before its first
session; nothing is patched on import, so a process that merely imports `backends` runs
pyghmi unchanged. Each change is idempotent and marks the module it changed.
"""

from __future__ import annotations

import threading
from typing import Any

from pyghmi.ipmi.private import session as pyghmi_session

_WAIT_SLICE = 0.02


def apply() -> None:
    """Cap pyghmi's IO waits and give its two session tables one lock (see each change)."""
    _slice_io_waits()
    _one_table_lock()


def _slice_io_waits() -> None:
    """Cap pyghmi's IO waits at `_WAIT_SLICE` seconds so no queued reply waits for a timer."""
    if getattr(pyghmi_session, "_nodefence_wait_fix", False):
        return
    io_wait = pyghmi_session._io_wait

    def sliced_io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        io_wait(min(timeout, _WAIT_SLICE), myaddr, evq)

    pyghmi_session._io_wait = sliced_io_wait
    pyghmi_session._nodefence_wait_fix = True


def _one_table_lock() -> None:
    """One lock for pyghmi's two session tables, so its lock order cannot deadlock.

    pyghmi takes its keepalive-table and waiting-table locks in opposite orders on two paths
    (a request timing out while holding the waiting table resends, which takes the keepalive
    lock; a send holding the keepalive lock takes the waiting one). Two sessions timing out
    and resending at the same moment deadlock. Both names are looked up at each use, so one
    reentrant lock under both makes the order irrelevant.
    """
    if getattr(pyghmi_session, "_nodefence_lock_fix", False):
        return
    tables = threading.RLock()
    pyghmi_session.KEEPALIVE_SESSIONS = tables
    pyghmi_session.WAITING_SESSIONS = tables
    pyghmi_session._nodefence_lock_fix = True
