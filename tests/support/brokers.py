"""mosquitto in a test: started on a free loopback port, stopped when the block ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nodefence.hwsim.broker import MosquittoBroker


@contextmanager
def running_broker(workdir: Path, users: dict[str, str] | None = None) -> Iterator[MosquittoBroker]:
    """A mosquitto broker in `workdir`; with `users` (name: password), logins required."""
    broker = MosquittoBroker(workdir, users=users)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
