"""What one simulated run did: its event log, the faults it injected, and the agent's log tail.

The event log is the run's transcript (`-v` prints it): faults, power changes, leadership,
record writes, BMC requests, Node deletions, VM starts. Two runs of one seed produce the same
log, line for line; the determinism test compares them. The agent's own log lines (every
`nodefence.*` logger) are kept in a ring buffer, stamped with the virtual time, for the
violation report; they are never printed during a run.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

LOG_TAIL = 60  # agent log lines kept per run


@dataclass
class Trace:
    """The event log and fault counts of one run."""

    now: Callable[[], float]
    events: list[tuple[float, str, str]] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    log_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_TAIL)
    )
    repeats: dict[int, int] = field(default_factory=dict)  # event index -> times in a row

    def event(self, kind: str, text: str) -> None:
        """Append one line to the event log (a line repeating the previous one is counted)."""
        events = self.events
        if events and events[-1][1] == kind and events[-1][2] == text:
            self.repeats[len(events) - 1] = self.repeats.get(len(events) - 1, 1) + 1
            return
        events.append((self.now(), kind, text))

    def fault(self, kind: str, text: str) -> None:
        """Count and log an injected fault."""
        self.faults[kind] += 1
        self.events.append((self.now(), "fault", f"{kind} {text}"))

    def lines(self, last: int | None = None) -> list[str]:
        """The event log as text lines (the last `last` ones, or all)."""
        first = 0 if last is None else max(0, len(self.events) - last)
        lines = []
        for i in range(first, len(self.events)):
            t, kind, text = self.events[i]
            times = self.repeats.get(i)
            lines.append(f"{t:9.3f}  {kind:<9} {text}" + (f"  (x{times})" if times else ""))
        return lines


class _TailHandler(logging.Handler):
    """Sends agent log records to the current run's trace (or drops them between runs)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.trace: Trace | None = None

    def emit(self, record: logging.LogRecord) -> None:
        trace = self.trace
        if trace is None:
            return
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        trace.log_tail.append(f"{trace.now():9.3f}  {record.levelname:<8} {record.name}: {text}")


_HANDLER = _TailHandler()


def capture_agent_logs(trace: Trace | None) -> None:
    """Route every `nodefence.*` log line to `trace` (None: drop them), never to stderr."""
    root = logging.getLogger("nodefence")
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
        root.propagate = False
        root.setLevel(logging.INFO)
        # asyncio's own complaints (a task destroyed while pending at the end of a run) are
        # expected here: every run ends with its processes frozen mid-flight.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _HANDLER.trace = trace
