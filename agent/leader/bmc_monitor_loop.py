"""The leader's continuous BMC checks: every inventory device, every `bmc_check_interval`.

Pacemaker monitors each fence device for the same reason: a rotated password, an expired
certificate or a BMC that lost its network is otherwise found only when a node must be
fenced. One round checks every device of the inventory once; the checks of a round start
spread evenly over the interval (no burst of logins against a rack of BMCs) and at most
`parallel` run at once. A device check is `PowerBackend.check()` (reachable, login, power
read, hard power-off offered) plus, for HTTPS Redfish devices, the days until the
certificate expires (`nodefence.backends.tls_cert`). A node whose fencing operation runs is not
checked meanwhile: its walk talks to the same BMCs.

What the checks mean is `nodefence.agent.leader.bmc_health` (pure); this module does the I/O, keeps
the metrics current and hands every transition to `report` (the leader turns it into an Event
and an alert).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from nodefence.agent.config.inventory_file import FencingPolicy, Inventory
from nodefence.agent.fencing.power_executor import BackendFactory
from nodefence.agent.leader.bmc_health import DeviceCheck, HealthBook, Transition
from nodefence.agent.observe import metrics
from nodefence.backends.base import PowerState
from nodefence.backends.errors import FenceError
from nodefence.backends.registry import build_backend
from nodefence.backends.spec import DeviceSpec, RedfishDevice
from nodefence.backends.tls_cert import certificate_days_left

log = logging.getLogger("nodefence.bmc")

Report = Callable[[Transition], Awaitable[None]]
_MARGIN = 5.0  # seconds a check may take beyond its device's own timeouts


class CertDays(Protocol):
    """Days until the TLS certificate at host:port expires (`certificate_days_left`)."""

    async def __call__(self, host: str, port: int, *, timeout: float) -> float:
        """See `nodefence.backends.tls_cert.certificate_days_left`."""
        ...


class BmcMonitor:
    """Checks every device of `inventory()` once per `interval` seconds (see module doc)."""

    def __init__(
        self,
        inventory: Callable[[], Inventory | None],
        *,
        interval: float,
        parallel: int,
        report: Report,
        busy: Callable[[str], bool] = lambda node: False,
        factory: BackendFactory = build_backend,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        cert_days: CertDays = certificate_days_left,
    ) -> None:
        self.inventory = inventory
        self.cert_days = cert_days
        self.interval = interval
        self.report = report
        self.busy = busy
        self.factory = factory
        self.clock = clock
        self.wall = wall
        self.book = HealthBook()
        self.rounds = 0
        self._slots = asyncio.Semaphore(max(1, parallel))
        self._labels: set[tuple[str, str, str]] = set()

    async def run(self) -> None:
        """Check rounds until cancelled; each starts `interval` after the previous one. When
        it ends (leadership lost) its metric series go: the next leader exports its own."""
        try:
            while True:
                started = self.clock()
                try:
                    await self.check_round(spread=True)
                except Exception:  # never let the monitoring end the leader side
                    log.exception("BMC check round failed unexpectedly")
                await asyncio.sleep(max(0.0, started + self.interval - self.clock()))
        finally:
            self._forget_removed(Inventory("", {}, FencingPolicy()))

    async def check_round(self, *, spread: bool = False) -> None:
        """Check every device once (spread over the interval when `spread`)."""
        inventory = self.inventory()
        if inventory is None:
            return
        for transition in self._forget_removed(inventory):
            await self.report(transition)
        jobs = [(node, dev) for node in inventory.nodes.values() for dev in node.devices()]
        started = self.clock()
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, (node, dev) in enumerate(jobs):
                if spread and i:
                    await asyncio.sleep(
                        max(0.0, started + i * self.interval / len(jobs) - self.clock())
                    )
                if self.busy(node.name):
                    continue
                tasks.append(asyncio.create_task(self._check_and_record(inventory, node.name, dev)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        self.rounds += 1

    async def _check_and_record(self, inventory: Inventory, node: str, dev: DeviceSpec) -> None:
        try:
            await self._check_and_record_unguarded(inventory, node, dev)
        except Exception:
            # A fault in the monitoring must never take the leader side (and fencing) down.
            log.exception("BMC check of %s/%s failed unexpectedly", node, dev.name)

    async def _check_and_record_unguarded(
        self, inventory: Inventory, node: str, dev: DeviceSpec
    ) -> None:
        async with self._slots:
            check = await self.check_device(node, dev)
        self._export(check)
        for transition in self.book.record(check, inventory.nodes[node], inventory.policy):
            log.log(
                logging.ERROR if transition.warning else logging.INFO,
                "%s: %s",
                transition.change.value,
                transition.message,
                extra={"node": node},
            )
            await self.report(transition)
        verdict = self.book.nodes.get(node)
        if verdict is not None and verdict.fenceable is not None:
            metrics.NODE_FENCEABLE.labels(node).set(1 if verdict.fenceable else 0)

    async def check_device(self, node: str, dev: DeviceSpec) -> DeviceCheck:
        """Check one device now; never raises (a failure is in the result)."""
        t = dev.timeouts
        started = self.clock()
        cert_days: float | None = None
        try:
            backend = self.factory(node, dev)
        except FenceError as err:
            return DeviceCheck(
                node,
                dev.name,
                dev.type,
                self.wall(),
                False,
                False,
                PowerState.UNKNOWN,
                False,
                err.reason,
                str(err),
            )
        try:
            async with asyncio.timeout(3 * t.timeout + _MARGIN):
                result = await backend.check()
                if isinstance(dev, RedfishDevice) and dev.scheme == "https":
                    with contextlib.suppress(FenceError):
                        cert_days = await self.cert_days(dev.address, dev.port, timeout=t.timeout)
            check = DeviceCheck(
                node,
                dev.name,
                dev.type,
                self.wall(),
                result.reachable,
                result.authenticated,
                result.power,
                result.reset_supported,
                result.reason,
                result.detail,
                cert_days,
            )
        except TimeoutError:
            check = DeviceCheck(
                node,
                dev.name,
                dev.type,
                self.wall(),
                True,
                False,
                PowerState.UNKNOWN,
                False,
                "timeout",
                f"the check did not finish within {3 * t.timeout + _MARGIN:g} s",
            )
        finally:
            with contextlib.suppress(FenceError):
                await backend.close()
        metrics.BMC_CHECK_DURATION.observe(self.clock() - started)
        return check

    def _export(self, check: DeviceCheck) -> None:
        metrics.BMC_CHECKS.labels("ok" if check.healthy else check.problem.split(" ")[0]).inc()
        metrics.BMC_CHECK_OK.labels(check.node, check.device, check.type).set(
            1 if check.healthy else 0
        )
        self._labels.add((check.node, check.device, check.type))
        metrics.BMC_CHECKED_AT.labels(check.node, check.device).set(check.at)
        if check.cert_days is not None:
            metrics.BMC_CERT_DAYS.labels(check.node, check.device).set(round(check.cert_days, 2))

    def _forget_removed(self, inventory: Inventory) -> list[Transition]:
        """Drop checks and metric series of devices no longer in the inventory; the verdicts
        that changed with it."""
        current = {(n.name, d.name, d.type) for n in inventory.nodes.values() for d in n.devices()}
        for node, device, kind in self._labels - current:
            for gauge, labels in (
                (metrics.BMC_CHECK_OK, (node, device, kind)),
                (metrics.BMC_CHECKED_AT, (node, device)),
                (metrics.BMC_CERT_DAYS, (node, device)),
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        gone_nodes = {n for n, _, _ in self._labels} - set(inventory.nodes)
        for node in gone_nodes:
            with contextlib.suppress(KeyError):
                metrics.NODE_FENCEABLE.remove(node)
        self._labels &= current
        self.book.forget_except(inventory.nodes)
        return [t for n in inventory.nodes.values() for t in self.book.judge(n, inventory.policy)]

    def node_view(self, node: str) -> dict[str, object] | None:
        """The node's BMC state for the leader's view (`nodefence status`), or None."""
        checks = self.book.checks.get(node)
        if not checks:
            return None
        verdict = self.book.nodes.get(node)
        return {
            "summary": self.book.summary(node),
            "fenceable": None if verdict is None else verdict.fenceable,
            "reason": "" if verdict is None else verdict.reason,
            "devices": [
                {
                    "device": c.device,
                    "type": c.type,
                    "ok": c.healthy,
                    "problem": c.problem,
                    "warning": c.warning,
                    "detail": c.detail if not c.healthy else "",
                    "certDays": None if c.cert_days is None else round(c.cert_days, 1),
                    "checkedAt": round(c.at, 1),
                }
                for c in checks.values()
            ],
        }
