"""Self-fencing end to end: real agent processes feeding emulated watchdog devices (FIFOs read
by hwsim), nodes reaching the broker and the API server through their own relays so a node can
be cut off while its agent keeps running, and BMCs that cannot be reached."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.support.e2e import (
    Make,
    assert_recovered_elsewhere,
    final_record,
    node_exists,
    records,
    start,
    victim_of,
    vms_on,
)
from tests.support.timings import SELF_FENCE, WATCHDOG


class PowerAtDeletion(threading.Thread):
    """Samples, every 20 ms, whether `node`'s Node object exists and its machine has power;
    remembers the first sample without the Node."""

    def __init__(self, cluster: Any, node: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node = cluster, node
        self.deleted_at: float | None = None
        self.power_then: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            power = self.cluster.fleet[self.node].power_state()
            if not node_exists(self.cluster, self.node):
                self.deleted_at, self.power_then = time.monotonic(), power
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def test_an_isolated_node_with_a_dead_bmc_resets_itself_and_only_then_is_counted_fenced(
    make_cluster: Make,
) -> None:
    # The victim hosts no broker: a cut-off broker host still round-trips its heartbeats
    # through its own broker (docs/operator-guide.md, "A broker's own node"), so it keeps
    # feeding; the leader, which lost that broker, then rightly never takes the watchdog as
    # proof. Which node leads is the election's choice, so the victim is chosen after it.
    cluster = start(
        make_cluster,
        links=True,
        brokers=1,  # three nodes: with two brokers the leader may leave only broker hosts
        watchdog={**WATCHDOG, "reboot_after": None},  # a slow machine: stays down for the test
        fencing=SELF_FENCE,
    )
    victim = victim_of(cluster, exclude=tuple(cluster.broker_hosts))
    node = cluster.nodes[victim]
    assert node.watchdog is not None
    cluster.wait_for(
        "the victim's watchdog armed", lambda: node.watchdog and node.watchdog.armed, 10
    )
    before = vms_on(cluster, victim)
    watch = PowerAtDeletion(cluster, victim)
    watch.start()
    try:
        cluster.fleet[victim].set_faults(unreachable=True)
        node.isolate()  # its agent runs on, cut off from broker and API server
        cut_at = time.monotonic()
        cluster.wait_for("the watchdog reset", lambda: node.watchdog_resets, 15)
        reset_at = node.watchdog_resets[0]
        # Not before the cut-off plus the device's timeout, counted from the agent's last
        # contact: an API read at most one check interval (or a feed) before the cut.
        w = WATCHDOG
        early = w["api_check_interval"] + w["feed_interval"] + 0.2
        assert reset_at - cut_at >= w["cut_off_after"] + w["timeout"] - early
        rec = final_record(cluster, victim, ("Recovered",), timeout=60)
    finally:
        watch.stop()
    status = rec["status"]
    assert status["proof"] == "watchdog" and status["offProven"]
    assert "watchdog self-fence" in status["reason"] or status["phase"] == "Recovered"
    assert any("unreachable" in e or "nothing received" in e for e in status["errors"])
    assert watch.deleted_at is not None and watch.power_then == "off"
    assert reset_at < watch.deleted_at  # the Node went only after the machine had reset
    assert_recovered_elsewhere(cluster, victim, before, rec)
    reasons = [e["reason"] for e in cluster.events() if e["involvedObject"]["name"] == victim]
    assert "FencePoweredOff" in reasons


def test_without_an_armed_watchdog_an_unreachable_bmc_never_counts_as_fenced(
    make_cluster: Make,
) -> None:
    # The leader allows self-fencing, but the nodes run no watchdog: their heartbeats never
    # claimed one, so nothing but a BMC read-back can prove the node off.
    cluster = start(make_cluster, links=True, brokers=1, fencing=SELF_FENCE)
    victim = victim_of(cluster, exclude=tuple(cluster.broker_hosts))
    before = vms_on(cluster, victim)
    cluster.fleet[victim].set_faults(unreachable=True)
    cluster.nodes[victim].isolate()
    final_record(cluster, victim, ("FenceFailed",), timeout=40)
    time.sleep(WATCHDOG["cut_off_after"] + WATCHDOG["timeout"] + 3)  # past any deadline
    assert node_exists(cluster, victim)
    assert cluster.fleet[victim].power_state() == "on"
    assert all(not r["status"]["offProven"] for r in records(cluster, victim))
    for vm in before:
        key = (vm["metadata"]["namespace"], vm["metadata"]["name"])
        assert cluster.vm_controller.running_places(*key) == {victim}
    assert cluster.vm_controller.violations() == []
