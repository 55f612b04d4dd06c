"""The node's watchdog feeder: opens, arms, feeds and (on a clean stop) disarms the device.

I/O over the pure `nodefence.agent.node.watchdog_rules.FeedPolicy` (when to feed) and
`clean_stop_disarms`: one byte per `feed_interval` while the policy allows; at arming, the
configured timeout is set with an ioctl and the one the driver applies is what heartbeats advertise;
the magic 'V' only after an acknowledged clean-stop announcement. See
`nodefence.agent.node.watchdog_rules` for the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from nodefence.agent.heartbeat.codec import WatchdogClaim
from nodefence.agent.node.watchdog_rules import FeedPolicy, clean_stop_disarms

log = logging.getLogger("nodefence.watchdog")

KEEPALIVE = b"\0"
MAGIC_CLOSE = b"V"
# linux/watchdog.h: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class WatchdogDeviceError(Exception):
    """The watchdog device cannot be opened or written (the message names it)."""


Announce = Callable[[], Awaitable[bool]]


async def _not_announced() -> bool:
    return False


class WatchdogFeeder:
    """Feeds `device` while `policy` allows; see the module doc.

    `read_timeout`: at arming, set the configured timeout on the device and advertise what the
    driver read back (drivers round and cap it); False only for an emulated device without
    ioctls. `announce()`: on a clean stop, publish that this boot's watchdog is disarmed and
    return True once the broker acknowledged it; only then is the device disarmed."""

    def __init__(
        self,
        device: str,
        policy: FeedPolicy,
        claim: WatchdogClaim,
        clock: Callable[[], float] = time.monotonic,
        *,
        read_timeout: bool = True,
        announce: Announce = _not_announced,
    ) -> None:
        self.device = device
        self.policy = policy
        self._claim = claim
        self.clock = clock
        self.read_timeout = read_timeout
        self.announce = announce
        self._fd: int | None = None
        self.feeds = 0
        self.stop_reason = ""
        self.disarmed = False

    def armed_claim(self) -> WatchdogClaim | None:
        """What heartbeats advertise: the claim while the device is armed and fed."""
        if self._fd is None or self.policy.stopped or self.policy.claim_withdrawn:
            return None
        return self._claim

    def _open(self) -> None:
        try:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            no_reader = err.errno == errno.ENXIO
            hint = " (no reader: is the watchdog driver loaded?)" if no_reader else ""
            raise WatchdogDeviceError(
                f"cannot open watchdog device {self.device}: {err.strerror}{hint}"
            ) from None
        if self.read_timeout:
            self._claim = replace(self._claim, timeout=self._device_timeout())
        log.warning("watchdog %s armed (timeout %g s)", self.device, self._claim.timeout)

    def _device_timeout(self) -> float:
        """Set the configured timeout and read back the one the driver applies."""
        assert self._fd is not None
        wanted = max(1, math.ceil(self._claim.timeout))
        try:
            with contextlib.suppress(OSError):  # some drivers have a fixed timeout
                fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", wanted))
            got = struct.unpack("i", fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, b"\0" * 4))[0]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.write(self._fd, MAGIC_CLOSE)  # opening armed it: do not leave it running
            os.close(self._fd)
            self._fd = None
            raise WatchdogDeviceError(
                f"cannot read the timeout of watchdog device {self.device}: {err.strerror}"
                " (not a watchdog driver? watchdog.timeout_from: config is for emulators only)"
            ) from None
        if got <= 0:
            raise WatchdogDeviceError(f"watchdog device {self.device} reports timeout {got}")
        if got != wanted:
            log.warning(
                "watchdog %s: asked for a %d s timeout, the driver applies %d s (advertised)",
                self.device,
                wanted,
                got,
            )
        return float(got)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            os.write(self._fd, data)
        except OSError as err:
            raise WatchdogDeviceError(
                f"cannot write watchdog device {self.device}: {err.strerror}"
            ) from None

    def tick(self) -> bool:
        """Feed once if allowed (arming the device at the first feed); False once stopped."""
        if not self.policy.should_feed(self.clock()):
            if self.policy.stopped and not self.stop_reason:
                self.stop_reason = self.policy.stopped
                log.critical(
                    "self-fencing: stopped feeding the watchdog (%s); the node resets within %g s",
                    self.stop_reason,
                    self._claim.timeout,
                )
            return not self.policy.stopped
        if self._fd is None:
            self._open()
        self._write(KEEPALIVE)
        self.feeds += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Feed every `feed_interval` until `stop` or until feeding stops for good.

        A clean stop disarms the device only when the node is still in contact and has seen no
        fencing record (a cut-off node's watchdog must fire even if its agent is stopped) and
        once the leader can know it (`announce()` acknowledged); otherwise the device stays
        armed and resets the node within its timeout."""
        try:
            while not stop.is_set():
                if not self.tick():
                    await stop.wait()  # never feed again; keep the device open
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._claim.feed_interval)
            if self._fd is not None:
                await self._clean_stop()
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    async def _clean_stop(self) -> None:
        if not self.policy.should_feed(self.clock()):
            log.critical(
                "clean stop while cut off or fenced (%s): the watchdog stays armed and resets"
                " the node within %g s",
                self.policy.stopped or "not armed",
                self._claim.timeout,
            )
            return
        self._write(KEEPALIVE)  # a full timeout for the announcement
        try:
            announced = await self.announce()
        except Exception as err:  # any failure means the leader may not know
            log.warning("could not announce the clean stop: %s", err)
            announced = False
        if not clean_stop_disarms(self.policy, self.clock(), announced):
            log.critical(
                "clean stop not acknowledged by the broker: the watchdog stays armed (the"
                " leader may still count on it) and resets the node within %g s",
                self._claim.timeout,
            )
            return
        self._write(MAGIC_CLOSE)
        self.disarmed = True
        log.info("watchdog %s disarmed (clean stop, announced)", self.device)
