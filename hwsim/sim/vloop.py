"""An asyncio event loop on virtual time that never blocks, with per-process pause and kill.

`time()` is a number the loop advances itself: when nothing is ready it jumps to the next timer
(the idea of the `looptime` project, written for this harness), so a run of many simulated
minutes costs only the callbacks it executes. There is no selector, no self-pipe and no thread:
the simulation has no real I/O, and a callback that needs an answer later schedules a timer.

Every callback (a task step, a timer, a delivered message) runs in a `contextvars.Context`; the
`PROCESS` variable in it names the simulated process it belongs to (None for the harness
itself). A paused process's callbacks are parked and run, in their original order, when it
resumes (what SIGSTOP or a long GC pause does); a killed process's callbacks never run again.
A process's `after_step`, when set, is called after every one of its callbacks, so invariants
that watch a process's state are checked after each of its steps.

Tasks hash by creation order instead of memory address, so sets of tasks (asyncio's TaskGroup
cancels its children by iterating one) are walked in the same order in every run.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import heapq
import itertools
import logging
from asyncio import format_helpers
from asyncio.log import logger
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class ProcState(enum.Enum):
    """Whether a simulated process's callbacks run."""

    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"


class SimProcess:
    """A simulated OS process: a name, a state and the callbacks parked while paused."""

    __slots__ = ("after_step", "context", "name", "parked", "paused_at", "paused_total", "state")

    def __init__(self, name: str) -> None:
        self.name = name
        self.after_step: Callable[[], None] | None = None  # called after each of its callbacks
        self.state = ProcState.RUNNING
        self.parked: list[asyncio.Handle] = []
        self.paused_at: float | None = None
        self.paused_total = 0.0  # seconds spent paused, for "running time" in the invariants
        self.context = contextvars.copy_context()
        self.context.run(PROCESS.set, self)

    def __repr__(self) -> str:
        return f"SimProcess({self.name!r}, {self.state.value})"


PROCESS: contextvars.ContextVar[SimProcess | None] = contextvars.ContextVar(
    "nodefence_sim_process", default=None
)


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is pending: the run cannot go on."""


class Livelock(RuntimeError):
    """Callbacks keep running without virtual time ever passing (a busy loop)."""


MIN_WAIT = 1e-6  # seconds: the shortest wait for a timer that is not due yet
LIVELOCK_STEPS = 200_000  # steps at one virtual instant that count as a busy loop


class SimTask(asyncio.Task[Any]):
    """A Task whose hash is its creation number (stable set order across runs)."""

    __slots__ = ("_sim_seq",)

    def __init__(self, coro: Any, *, loop: VirtualLoop, **kwargs: Any) -> None:
        self._sim_seq = next(loop.task_numbers)  # before Task.__init__ puts it in a WeakSet
        super().__init__(coro, loop=loop, **kwargs)

    def __hash__(self) -> int:
        return self._sim_seq


class _Handle(asyncio.Handle):
    """asyncio's Handle without its debug bookkeeping (a virtual loop is never in debug mode):
    one is made for every callback of a run."""

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
    ) -> None:
        self._context = context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


class _TimerHandle(asyncio.TimerHandle):
    """asyncio's TimerHandle without its debug bookkeeping (see `_Handle`)."""

    __slots__ = ()

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
    ) -> None:
        self._context = context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None
        self._when = when
        self._scheduled = True


class VirtualLoop(asyncio.BaseEventLoop):
    """The simulation's event loop (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._time = 0.0
        self.task_numbers = itertools.count()
        # Timers as (when, sequence, handle): compared in C, and equal times keep their order.
        self._timers: list[tuple[float, int, Any]] = []
        self._timer_seq = itertools.count()
        self.steps = 0
        self._steps_at_now = 0
        self.harness = contextvars.copy_context()  # PROCESS is None here

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> SimTask:
        """A `SimTask` of `coro` (as asyncio's create_task with a task factory)."""
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        task = (
            SimTask(coro, loop=self)
            if context is None
            else SimTask(coro, loop=self, context=context)
        )
        if name is not None:
            task.set_name(name)
        return task

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """asyncio's, unless its logger would drop the message anyway (a run silences the
        `asyncio` logger: every run ends with tasks destroyed while pending), so the message
        is not built for nobody."""
        if logger.isEnabledFor(logging.ERROR):
            super().default_exception_handler(context)

    def time(self) -> float:
        """The virtual time in seconds since the loop started."""
        return self._time

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """Schedule `callback` next (see `asyncio.loop.call_soon`; no debug checks)."""
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        handle = _Handle(
            callback, args, self, contextvars.copy_context() if context is None else context
        )
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule `callback` `delay` seconds from now (see `call_at`)."""
        if delay is None:
            raise TypeError("delay must not be None")
        return self.call_at(self._time + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule `callback` at virtual time `when` (see `asyncio.loop.call_at`).

        A timer in the future is at least `MIN_WAIT` ahead: real time always passes a little,
        and a process whose clock runs slow (drift) would otherwise sleep ever shorter deltas
        towards a deadline on its own clock without virtual time ever reaching it.
        """
        now = self._time
        if when > now and when < now + MIN_WAIT:
            when = now + MIN_WAIT
        timer = _TimerHandle(
            when, callback, args, self, contextvars.copy_context() if context is None else context
        )
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        return timer

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        return None  # cancelled timers are skipped when they fall due

    # -- processes -----------------------------------------------------------------------------

    def pause(self, proc: SimProcess) -> None:
        """Stop running `proc`'s callbacks until `resume` (timers still fall due meanwhile)."""
        if proc.state is ProcState.RUNNING:
            proc.state = ProcState.PAUSED
            proc.paused_at = self._time

    def resume(self, proc: SimProcess) -> None:
        """Run `proc` again: its parked callbacks go first, in the order they fell due."""
        if proc.state is not ProcState.PAUSED:
            return
        proc.state = ProcState.RUNNING
        if proc.paused_at is not None:
            proc.paused_total += self._time - proc.paused_at
        proc.paused_at = None
        parked, proc.parked = proc.parked, []
        self._ready.extendleft(reversed(parked))  # type: ignore[attr-defined]

    def kill(self, proc: SimProcess) -> None:
        """Never run `proc`'s callbacks again (SIGKILL: nothing more goes out)."""
        if proc.paused_at is not None:
            proc.paused_total += self._time - proc.paused_at
            proc.paused_at = None
        proc.state = ProcState.KILLED
        proc.parked.clear()

    # -- the loop ------------------------------------------------------------------------------

    def _run_once(self) -> None:
        """Run iterations of the loop until `stop()` (each as asyncio's `_run_once`: the
        callbacks ready when it starts, after the timers due then); `run_forever` calls it
        once, so the per-call setup is paid once per run, not once per instant."""
        # Handles are typed Any here: their private fields (_cancelled, _context, _callback,
        # _args) are asyncio's, read directly because this is the innermost loop of every run.
        ready: deque[Any] = self._ready  # type: ignore[attr-defined]
        timers = self._timers
        pop = heapq.heappop
        popleft = ready.popleft
        running = ProcState.RUNNING
        paused = ProcState.PAUSED
        process = PROCESS
        while True:
            if not ready and not self._stopping:  # type: ignore[attr-defined]
                while timers and timers[0][2]._cancelled:
                    pop(timers)
                if not timers:
                    raise Deadlock("no callback is ready and no timer is pending")
                when = timers[0][0]
                if when > self._time:
                    self._time = when
                    self._steps_at_now = 0
            if self._steps_at_now > LIVELOCK_STEPS:
                spinning = repr(ready[0]) if ready else "?"
                raise Livelock(
                    f"{self._steps_at_now} steps at t={self._time:.3f} without time passing"
                    f" (e.g. {spinning[:300]})"
                )
            now = self._time
            while timers and timers[0][0] <= now:
                timer = pop(timers)[2]
                timer._scheduled = False
                if not timer._cancelled:
                    ready.append(timer)
            n = len(ready)
            self.steps += n
            self._steps_at_now += n
            for _ in range(n):
                handle = popleft()
                if handle._cancelled:
                    continue
                context = handle._context
                proc = context.get(process)
                if proc is not None and proc.state is not running:
                    if proc.state is paused:
                        proc.parked.append(handle)
                    continue
                # What Handle._run does, without its frame.
                try:
                    context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._callback_failed(handle, exc)
                if proc is not None:
                    after = proc.after_step
                    if after is not None:
                        after()
            if self._stopping:  # type: ignore[attr-defined]
                return

    def _callback_failed(self, handle: Any, exc: BaseException) -> None:
        """An exception left a callback: to the exception handler, as Handle._run does."""
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
        self.call_exception_handler(
            {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        )

    # Nothing in the simulation uses these; they exist so asyncio's base class is complete.
    def _process_events(self, event_list: list[Any]) -> None:
        return None

    def _write_to_self(self) -> None:
        return None


def spawn(
    loop: VirtualLoop, proc: SimProcess, coro: Coroutine[Any, Any, T], name: str
) -> asyncio.Task[T]:
    """Start `coro` as the root task of `proc` (its callbacks carry `proc`)."""
    return loop.create_task(coro, name=name, context=proc.context.copy())
