"""A live view of a simulated cluster: nodes (leader's state, heartbeat age, power) and VMs
(phase, node), redrawn in place on a terminal; callers print plain lines when not a TTY."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views


class LeaderViewFeed:
    """Follows the leader's retained view topic on every broker over MQTT (paho, in its own
    threads): the newest view wins, so a broker that died with its machine hides nothing."""

    def __init__(self, cluster: SimCluster, name: str = "liveview") -> None:
        self.view: dict[str, Any] = {}
        self._topic = f"nodefence/v1/{cluster.settings.cluster}/leader/view"
        self._ports = [b.port for b in cluster.brokers]
        login = cluster.observer_login()
        self._clients = []
        for i, _ in enumerate(self._ports):
            # One id per follower: a second client with the same id would push the first off.
            client_id = f"nodefence-{name}-{i}"
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
            client.on_connect = lambda c, *_: c.subscribe(self._topic)
            client.on_message = self._on_message
            if login is not None:
                client.username_pw_set(*login)
            self._clients.append(client)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            view = json.loads(msg.payload)
        except ValueError:
            return
        if float(view.get("publishedAt", 0)) >= float(self.view.get("publishedAt", 0)):
            self.view = view

    def start(self) -> None:
        """Connect and follow (reconnects on its own)."""
        for client, port in zip(self._clients, self._ports, strict=True):
            client.connect_async("127.0.0.1", port, keepalive=10)
            client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        for client in self._clients:
            client.disconnect()
            client.loop_stop()


def render(
    cluster: SimCluster, view: dict[str, Any], recent: list[str], width: int = 100
) -> list[str]:
    """The screen as lines (pure apart from reading the cluster's state)."""
    rows = {r["node"]: r for r in view.get("nodes", [])}
    lines = [
        f"leader: {view.get('leader', '?')}   profile: {view.get('profile', '?')}"
        + ("   DECISIONS FROZEN" if view.get("frozen") else "")
    ]
    lines.append(f"{'NODE':<10}{'STATE':<12}{'HEARTBEAT':>10}  {'POWER':<6} NOTE")
    for machine in cluster.fleet:
        r = rows.get(machine.name, {})
        age = r.get("heartbeatAge")
        note = "cut off" if cluster.nodes[machine.name].partitioned else ""
        lines.append(
            f"{machine.name:<10}{r.get('state', '-'):<12}"
            f"{'-' if age is None else f'{age:.1f}s':>10}  "
            f"{machine.power_state():<6} {note}"
        )
    vms = vm_views(cluster.kube.store)
    cells = []
    for vm in sorted(vms, key=lambda v: (len(v.name), v.name)):
        cells.append(f"{vm.name}:{vm.phase or '?'}@{vm.node or '-'}")
    row = "VMs:"
    for cell in cells or ["none"]:
        if len(row) + 2 + len(cell) > width:
            lines.append(row)
            row = "    "
        row += "  " + cell
    lines.append(row)
    lines.append("-" * min(width, 100))
    lines.extend(recent[-12:])
    return [line[:width] for line in lines]


class LiveScreen:
    """Redraws `render()` in place on a TTY every `period` seconds."""

    def __init__(
        self, cluster: SimCluster, recent: list[str], out: TextIO = sys.stdout, period: float = 0.5
    ) -> None:
        self.cluster = cluster
        self.recent = recent
        self.out = out
        self.period = period
        self.feed = LeaderViewFeed(cluster)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._drawn = 0

    def start(self) -> None:
        """Start following and drawing."""
        self.feed.start()
        self._thread.start()

    def stop(self) -> None:
        """Draw a last time and stop."""
        self._stop.set()
        self._thread.join(2)
        self.feed.stop()

    def _run(self) -> None:
        while True:
            self._draw()
            if self._stop.wait(self.period):
                self._draw()
                return

    def _draw(self) -> None:
        try:
            lines = render(self.cluster, self.feed.view, self.recent)
        except Exception:  # the cluster may be stopping; never crash the scenario
            return
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
