"""A monotonic clock the test moves by hand, for code that takes its time as a callable."""

from __future__ import annotations


class FakeClock:
    """Reads `now`; `sleep` and `advance` move it. With `step`, every look moves it first by
    `step` (for code that only needs time to pass between two looks)."""

    def __init__(self, now: float = 0.0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An `asyncio.sleep` stand-in that returns at once, `seconds` later on this clock."""
        self.now += seconds
