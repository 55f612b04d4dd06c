"""The emulated /dev/watchdog: keepalives, expiry, magic close, re-arm, real writers."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodefence.hwsim.watchdog import EmulatedWatchdog
from tests.support.wait import eventually_blocking

TIMEOUT = 0.3
SLACK = 0.25


class Expiries:
    """Records `on_expire` calls with their monotonic time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()


@pytest.fixture
def expired() -> Expiries:
    return Expiries()


@pytest.fixture
def watchdog(tmp_path: Path, expired: Expiries) -> Iterator[EmulatedWatchdog]:
    wd = EmulatedWatchdog(tmp_path / "watchdog", TIMEOUT, expired)
    wd.start()
    try:
        yield wd
    finally:
        wd.stop()


@pytest.fixture
def writer(watchdog: EmulatedWatchdog) -> Iterator[int]:
    fd = os.open(watchdog.path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def test_start_creates_a_fifo_that_a_writer_can_open(watchdog: EmulatedWatchdog) -> None:
    assert stat.S_ISFIFO(watchdog.path.lstat().st_mode)
    fd = os.open(watchdog.path, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)
    assert not watchdog.armed
    assert watchdog.feeds == 0
    assert watchdog.last_feed is None


def test_first_write_arms_and_feeds_keep_it_from_expiring(
    watchdog: EmulatedWatchdog, writer: int, expired: Expiries
) -> None:
    end = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < end:
        os.write(writer, b"\0")
        time.sleep(TIMEOUT / 4)
    eventually_blocking("watchdog.feeds >= 10", lambda: watchdog.feeds >= 10, timeout=2.0)
    assert watchdog.armed
    assert watchdog.last_feed is not None
    assert watchdog.expiries == []
    assert not expired.event.is_set()


def test_silence_fires_once_not_before_timeout(
    watchdog: EmulatedWatchdog, writer: int, expired: Expiries
) -> None:
    os.write(writer, b"k")
    eventually_blocking("watchdog.armed", lambda: watchdog.armed, timeout=2.0)
    fed_at = watchdog.last_feed
    assert fed_at is not None
    assert expired.event.wait(TIMEOUT + SLACK + 1.0)
    assert TIMEOUT <= expired.times[0] - fed_at <= TIMEOUT + SLACK
    assert watchdog.expiries == [pytest.approx(expired.times[0], abs=0.05)]
    assert not watchdog.armed
    time.sleep(2 * TIMEOUT)
    assert len(expired.times) == 1
    assert len(watchdog.expiries) == 1


def test_magic_close_disarms(watchdog: EmulatedWatchdog, writer: int, expired: Expiries) -> None:
    os.write(writer, b"k")
    eventually_blocking("watchdog.armed", lambda: watchdog.armed, timeout=2.0)
    os.write(writer, b"V")
    eventually_blocking("watchdog.disarms == 1", lambda: watchdog.disarms == 1, timeout=2.0)
    assert not watchdog.armed
    time.sleep(TIMEOUT + SLACK)
    assert watchdog.expiries == []
    assert not expired.event.is_set()


def test_keepalive_after_expiry_arms_it_again(
    watchdog: EmulatedWatchdog, writer: int, expired: Expiries
) -> None:
    os.write(writer, b"k")
    assert expired.event.wait(TIMEOUT + SLACK + 1.0)
    expired.event.clear()
    os.write(writer, b"k")
    eventually_blocking("watchdog.armed", lambda: watchdog.armed, timeout=2.0)
    assert watchdog.feeds == 2
    assert expired.event.wait(TIMEOUT + SLACK + 1.0)
    assert len(watchdog.expiries) == 2


def test_on_expire_errors_are_logged_and_the_watchdog_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("reset failed")

    wd = EmulatedWatchdog(tmp_path / "wd", 0.1, boom)
    wd.start()
    try:
        fd = os.open(wd.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"k")
            eventually_blocking("len(calls) == 1", lambda: len(calls) == 1, timeout=2.0)
            os.write(fd, b"k")
            eventually_blocking("len(calls) == 2", lambda: len(calls) == 2, timeout=2.0)
        finally:
            os.close(fd)
    finally:
        wd.stop()
    assert "on_expire failed" in caplog.text


def test_a_writer_in_another_process_feeds_then_magic_closes(
    watchdog: EmulatedWatchdog, expired: Expiries
) -> None:
    script = (
        "import os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)\n"
        "for _ in range(8):\n"
        "    os.write(fd, b'\\0')\n"
        "    time.sleep(0.05)\n"
        "os.write(fd, b'V')\n"
        "os.close(fd)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(watchdog.path)], check=True, timeout=10)
    eventually_blocking("watchdog.disarms == 1", lambda: watchdog.disarms == 1, timeout=2.0)
    assert watchdog.feeds == 8
    assert not watchdog.armed
    time.sleep(TIMEOUT + SLACK)
    assert not expired.event.is_set()


def test_a_writer_process_that_dies_lets_it_expire(
    watchdog: EmulatedWatchdog, expired: Expiries
) -> None:
    script = "import os, sys\nos.write(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK), b'1')\n"
    subprocess.run([sys.executable, "-c", script, str(watchdog.path)], check=True, timeout=10)
    assert expired.event.wait(TIMEOUT + SLACK + 1.0)
    assert watchdog.feeds == 1


def test_stop_removes_the_fifo_so_writers_see_no_device(tmp_path: Path) -> None:
    wd = EmulatedWatchdog(tmp_path / "watchdog", TIMEOUT, lambda: None)
    wd.start()
    wd.stop()
    assert not wd.path.exists()
    with pytest.raises(FileNotFoundError):
        os.open(wd.path, os.O_WRONLY | os.O_NONBLOCK)
    wd.stop()  # idempotent


def test_a_fifo_without_emulator_gives_enxio(tmp_path: Path) -> None:
    wd = EmulatedWatchdog(tmp_path / "watchdog", TIMEOUT, lambda: None)
    wd.start()
    wd.stop(remove_fifo=False)
    assert stat.S_ISFIFO(wd.path.lstat().st_mode)
    with pytest.raises(OSError) as err:
        os.open(wd.path, os.O_WRONLY | os.O_NONBLOCK)
    assert err.value.errno == errno.ENXIO


def test_start_replaces_a_stale_fifo_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    os.mkfifo(path)
    wd = EmulatedWatchdog(path, TIMEOUT, lambda: None)
    wd.start()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"k")
        eventually_blocking("wd.feeds == 1", lambda: wd.feeds == 1, timeout=2.0)
        wd.stop()
        with pytest.raises(BrokenPipeError):
            os.write(fd, b"k")
        os.close(fd)
        wd.start()
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"k")
        eventually_blocking("wd.feeds == 2", lambda: wd.feeds == 2, timeout=2.0)
        os.close(fd)
    finally:
        wd.stop()


def test_start_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    path.write_text("not a device")
    with pytest.raises(FileExistsError):
        EmulatedWatchdog(path, TIMEOUT, lambda: None).start()
    assert path.read_text() == "not a device"
