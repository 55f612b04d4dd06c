"""When each node's agent heartbeats last reached the broker, as a chaos run sees them.

A paho client logged in as the harness's observer follows every node's heartbeat topic
(reconnecting across broker restarts) and stamps each live (not retained) message with the
run's clock. The invariant checks compare these stamps with the moment a fencing record was
stored and the moment its power-off was sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from nodefence.hwsim.simcluster import SimCluster


class HeartbeatWatch:
    """`start()`, then `last()` gives node -> time of its last heartbeat; `stop()`."""

    def __init__(self, cluster: SimCluster, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._prefix = f"nodefence/v1/{cluster.settings.cluster}/heartbeat/"
        self._port = cluster.broker.port
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hwsim-chaos-heartbeats")
        self._client.on_connect = lambda c, *_: c.subscribe(self._prefix + "+")
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        login = cluster.observer_login()
        if login is not None:
            self._client.username_pw_set(*login)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain or not msg.topic.startswith(self._prefix):
            return
        node = msg.topic[len(self._prefix) :]
        with self._lock:
            self._last[node] = self._clock()

    def start(self) -> None:
        """Connect and follow in paho's own thread."""
        self._client.connect_async("127.0.0.1", self._port, keepalive=5)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def last(self) -> dict[str, float]:
        """Node -> run time of its last heartbeat seen on the broker."""
        with self._lock:
            return dict(self._last)
