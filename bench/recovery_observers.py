"""What the recovery bench observes, each item stamped with time.monotonic() on arrival: every
change of a few resources in the API emulator's store, and every node's heartbeats on every
broker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import aiomqtt

from nodefence.agent.heartbeat.codec import heartbeat_filter, node_from_topic
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.watch import WatchEvent
from nodefence.hwsim.loop_thread import LoopThread
from nodefence.hwsim.simcluster import SimCluster


class Recorder:
    """Every change to a few resources, stamped with time.monotonic() on arrival.

    One thread per store watch (all namespaces, from the current resourceVersion on); the store
    pushes under its lock from the writer's thread, so the reader wakes at once.
    """

    RESOURCES = ("events", "fenceoperations", "nodes", "virtualmachines")

    def __init__(self, store: ObjectStore) -> None:
        self.changes: list[tuple[float, str, WatchEvent]] = []
        self._lock = threading.Lock()
        rv = store.resource_version
        self._watchers = [(r, store.watch(r, resource_version=rv)) for r in self.RESOURCES]
        self._threads = [
            threading.Thread(target=self._read, args=(r, w), name=f"rec-{r}", daemon=True)
            for r, w in self._watchers
        ]
        for t in self._threads:
            t.start()

    def _read(self, resource: str, watcher: Any) -> None:
        while (event := watcher.get()) is not None:
            now = time.monotonic()
            with self._lock:
                self.changes.append((now, resource, event))

    def since(self, start: int) -> list[tuple[float, str, WatchEvent]]:
        with self._lock:
            return self.changes[start:]

    def mark(self) -> int:
        with self._lock:
            return len(self.changes)

    def stop(self) -> None:
        for _, w in self._watchers:
            w.close()
        for t in self._threads:
            t.join(5)


class HeartbeatListener:
    """Arrival times of every node's heartbeats on every broker, as any subscriber sees them
    (logged in as the harness's observer: the simulated brokers enforce passwords and the ACL).
    A broker that dies with its machine is reconnected when it is back."""

    def __init__(self, cluster: SimCluster) -> None:
        self.ports = [b.port for b in cluster.brokers]
        self.cluster = cluster.settings.cluster
        self.login = cluster.observer_login()
        self.heard: dict[str, list[float]] = {}
        self._loop = LoopThread("bench-heartbeats")
        self._ready = [threading.Event() for _ in self.ports]
        self._tasks: list[asyncio.Task[None]] = []
        try:
            self._loop.run(self._begin())
            for port, ready in zip(self.ports, self._ready, strict=True):
                if not ready.wait(10):
                    raise RuntimeError(f"cannot subscribe to the heartbeats on mosquitto:{port}")
        except BaseException:
            self.stop()
            raise

    async def _begin(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(i, port)) for i, port in enumerate(self.ports)
        ]

    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, index: int, port: int) -> None:
        user, password = self.login or (None, None)
        while True:
            try:
                client = aiomqtt.Client(
                    "127.0.0.1",
                    port,
                    username=user,
                    password=password,
                    identifier=f"bench-recovery-{index}",
                    keepalive=10,
                )
                async with client:
                    await client.subscribe(heartbeat_filter(self.cluster), qos=0)
                    self._ready[index].set()
                    async for message in client.messages:
                        node = node_from_topic(self.cluster, str(message.topic))
                        if node is not None:
                            self.heard.setdefault(node, []).append(time.monotonic())
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # its machine is off: back when it is powered on

    def last_before(self, node: str, t: float) -> float | None:
        return max((x for x in list(self.heard.get(node, ())) if x <= t), default=None)

    def heard_since(self, node: str, t: float) -> bool:
        return any(x >= t for x in list(self.heard.get(node, ())))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._end(), timeout=10)
        self._loop.close()
