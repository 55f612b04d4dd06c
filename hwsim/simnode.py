"""A simulated node: a machine, its kubelet (Lease, Ready, a TCP port peers can reach while it
has power), its nodefence agent process and, on the nodes that host one (as control-plane nodes
host the fencer Deployment's pods), a `nodefence fencer` process. Cutting power silences them
all at once.

Optionally the node reaches the broker and the API server through its own `TcpRelay`s (its
network link: `isolate()` cuts it while the agent keeps running) and has an emulated watchdog
device that resets the machine when the agent stops feeding it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from nodefence.hwsim.kube import ObjectStore, SimKubelet
from nodefence.hwsim.machine import PowerLiteral, SimMachine
from nodefence.hwsim.relay import TcpRelay
from nodefence.hwsim.watchdog import EmulatedWatchdog

REPO = Path(__file__).resolve().parent.parent


class KubeletPort:
    """A TCP listener on 127.0.0.1 standing in for the kubelet's port: open only while the
    machine has power (peers probe it to tell "agent dead" from "node dead")."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Listen (accepting and closing connections) until `close()`."""
        with self._lock:
            if self._sock is not None:
                return
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self._sock = sock
            self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._thread.start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        """Stop listening: connections are refused, as on a machine without power."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with_shutdown(sock)


def with_shutdown(sock: socket.socket) -> None:
    """Close a listening socket so a thread blocked in accept() returns."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class SimNode:
    """One node of the simulated cluster."""

    def __init__(
        self, machine: SimMachine, store: ObjectStore, workdir: Path, lease_interval: float = 10.0
    ) -> None:
        self.machine = machine
        self.name = machine.name
        self.workdir = workdir
        self.kubelet_port = KubeletPort()
        self.partitioned = False
        self.kubelet = SimKubelet(
            store,
            machine.name,
            self._kubelet_reaches_api,
            lease_interval=lease_interval,
            internal_ip="127.0.0.1",
            kubelet_port=self.kubelet_port.port,
            power_changes=lambda: machine.power_changes,  # a partition is no reboot
        )
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_config: Path | None = None
        self.agent_env: dict[str, str] = {}
        self.fencer: subprocess.Popen[bytes] | None = None
        self.fencer_config: Path | None = None  # set on the nodes that host a fencer
        self.fencer_env: dict[str, str] = {}
        self.relays: dict[str, TcpRelay] = {}  # "broker" / "api" / "health" -> its link
        self.health_port = 0  # the agent's health port behind the "health" relay
        self.watchdog: EmulatedWatchdog | None = None
        self.reboot_after: float | None = None  # after a watchdog reset; None: stays off
        self.watchdog_resets: list[float] = []  # monotonic times the watchdog reset the machine
        self._reboot: threading.Timer | None = None
        machine.on_power_change(self._power_changed)

    def link(self, name: str, host: str, port: int) -> int:
        """Route this node's traffic to (host, port) through a relay; returns the relay port."""
        relay = TcpRelay(host, port, name=f"{self.name}-{name}")
        relay.start()
        self.relays[name] = relay
        return relay.port

    def add_watchdog(self, path: Path, timeout: float, reboot_after: float | None) -> None:
        """An emulated watchdog device at `path` that resets the machine on expiry."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.watchdog = EmulatedWatchdog(path, timeout, self._watchdog_expired)
        self.reboot_after = reboot_after
        self.watchdog.start()

    def _watchdog_expired(self) -> None:
        # Called in the watchdog's thread, which the power-off listener restarts: reset from
        # another thread.
        threading.Thread(target=self._reset, name=f"{self.name}-reset", daemon=True).start()

    def _reset(self) -> None:
        if self.machine.power_state() != "on":
            return
        self.watchdog_resets.append(time.monotonic())
        self.machine.cut_power()  # the reset: everything on the machine stops at once
        if self.reboot_after is not None:
            self._reboot = threading.Timer(self.reboot_after, self.machine.request_on)
            self._reboot.daemon = True
            self._reboot.start()

    def isolate(self) -> None:
        """Cut the node's network link (a real partition): its agent keeps running but reaches
        neither the broker nor the API server, its kubelet stops renewing, its kubelet port is
        closed. Needs the relays (`link`)."""
        if not self.relays:
            raise RuntimeError(f"{self.name} has no network link to cut (start it with relays)")
        self.partitioned = True
        self.kubelet_port.close()
        for relay in self.relays.values():
            relay.cut("blackhole")

    def _kubelet_reaches_api(self) -> bool:
        return self.machine.power_state() == "on" and not self.partitioned

    def partition(self) -> None:
        """Cut the node off the network: its agent (and fencer), kubelet and kubelet port go
        silent, but the machine keeps power and keeps running its VMs (the split-brain
        danger)."""
        self.partitioned = True
        self.kubelet_port.close()
        self.kill_agent()
        self.kill_fencer()

    def heal(self, start_agent: bool = True) -> None:
        """Reconnect a partitioned node; its agent (and fencer) is started again unless
        `start_agent` is False (an agent stopped on purpose stays stopped)."""
        self.partitioned = False
        for relay in self.relays.values():
            relay.heal()
        if self.machine.power_state() == "on":
            self.kubelet_port.open()
            if start_agent and self.agent_config is not None and not self.agent_running():
                self.start_agent(self.agent_config, self.agent_env)
            if start_agent:
                self._restart_fencer()

    @property
    def log_path(self) -> Path:
        """The agent's log file."""
        return self.workdir / "logs" / f"{self.name}.log"

    @property
    def fencer_log_path(self) -> Path:
        """The fencer's log file (on a node that hosts one)."""
        return self.workdir / "logs" / f"{self.name}-fencer.log"

    def start(self) -> None:
        """Start the kubelet (and its port, while powered)."""
        if self.machine.power_state() == "on":
            self.kubelet_port.open()
        self.kubelet.tick()
        self.kubelet.start_in_thread()

    def stop(self) -> None:
        """Stop everything of this node (the test harness is shutting down)."""
        self.kill_agent()
        self.kill_fencer()
        self.kubelet.stop_thread()
        self.kubelet_port.close()
        if self._reboot is not None:
            self._reboot.cancel()
        if self.watchdog is not None:
            self.watchdog.stop()
        for relay in self.relays.values():
            relay.stop()

    def _spawn(
        self, role: str, config: Path, env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full = {**os.environ, "PYTHONPATH": str(REPO), "NODE_NAME": self.name, **env}
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "nodefence.agent.cli.main", role, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full,
            )

    def start_agent(self, config: Path, extra_env: dict[str, str] | None = None) -> None:
        """Start `nodefence agent` for this node as a real process, logging to `log_path`."""
        self.agent_config = config
        self.agent_env = dict(extra_env or {})
        self.agent = self._spawn("agent", config, self.agent_env, self.log_path)

    def agent_running(self) -> bool:
        """True while the agent process is alive."""
        return self.agent is not None and self.agent.poll() is None

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        """Stop the agent: SIGKILL (crash, default) or SIGTERM (clean)."""
        proc, self.agent = self.agent, None
        _end(proc, sig)

    def start_fencer(self, config: Path, extra_env: dict[str, str] | None = None) -> None:
        """Start `nodefence fencer` on this node as a real process (its pod, as scheduled
        here), logging to `fencer_log_path`."""
        self.fencer_config = config
        self.fencer_env = dict(extra_env or {})
        self.fencer = self._spawn("fencer", config, self.fencer_env, self.fencer_log_path)

    def fencer_running(self) -> bool:
        """True while this node's fencer process is alive."""
        return self.fencer is not None and self.fencer.poll() is None

    def kill_fencer(self, sig: int = signal.SIGKILL) -> None:
        """Stop this node's fencer: SIGKILL (crash, default) or SIGTERM (clean)."""
        proc, self.fencer = self.fencer, None
        _end(proc, sig)

    def _restart_fencer(self) -> None:
        if self.fencer_config is not None and not self.fencer_running():
            self.start_fencer(self.fencer_config, self.fencer_env)

    def _power_changed(self, machine: SimMachine, state: PowerLiteral) -> None:
        if state == "off":
            self.kubelet.power_lost()
            self.kubelet_port.close()
            self.kill_agent()
            self.kill_fencer()
            if self.watchdog is not None and self.watchdog.running:
                # A power cycle resets the watchdog hardware: disarmed until the next agent.
                self.watchdog.stop()
                self.watchdog.start()
        else:
            self.partitioned = False  # a power cycle: the node boots with its network
            for relay in self.relays.values():
                relay.heal()
            self.kubelet_port.open()
            if self.agent_config is not None and not self.agent_running():
                self.start_agent(self.agent_config, self.agent_env)
            self._restart_fencer()


def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a process and reap it (SIGKILL after 10 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
