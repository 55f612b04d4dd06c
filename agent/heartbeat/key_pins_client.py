"""Keeping the fencers' pins in step with the store: load, pin on first sight, reload.

Every fencer runs one `PinSync` beside its listener. At start it loads every NodeKey (retrying
until the API answers: a fencer that has not read the pins must not lead, since it would refuse
every node's heartbeats as `unpinned` and see a silent cluster). Then every `period` it stores
the keys its keyring saw first (`Keyring.wanted`; the first fencer to create a node's NodeKey
wins, the others read it back) and every `reload_period` it reads them all again, which is how
it learns the other fencers' pins and an operator's removal of one (a rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from nodefence.agent.heartbeat.node_keys import Keyring, fingerprint
from nodefence.agent.kube.errors import ClusterError

log = logging.getLogger("nodefence.keys")


class PinStore(Protocol):
    """Where pins live (`nodefence.agent.kube.client.ClusterApi` over NodeKey objects)."""

    async def list_node_keys(self, namespace: str) -> dict[str, bytes]:
        """Every pin: node -> raw public key."""
        ...

    async def pin_node_key(self, namespace: str, node: str, public: bytes, by: str) -> bool:
        """Create a pin; False when the node has one already."""
        ...


class PinSync:
    """See the module doc."""

    def __init__(
        self,
        keyring: Keyring,
        store: PinStore,
        namespace: str,
        identity: str,
        *,
        period: float = 0.5,
        reload_period: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyring = keyring
        self.store = store
        self.namespace = namespace
        self.identity = identity
        self.period = period
        self.reload_period = reload_period
        self.clock = clock
        self.loaded = asyncio.Event()
        self._loaded_at: float | None = None

    async def reload(self) -> bool:
        """Read every pin; False (pins unchanged) when the API cannot be read."""
        try:
            pins = await self.store.list_node_keys(self.namespace)
        except ClusterError as err:
            log.warning("cannot read the pinned node keys: %s", err)
            return False
        for node in self.keyring.load(pins):
            log.warning("node %s: its pinned key was removed or replaced in the store", node)
        self._loaded_at = self.clock()
        self.loaded.set()
        return True

    async def load(self, stop: asyncio.Event) -> bool:
        """Read the pins, retrying every `period` until done (True) or `stop` (False)."""
        while not stop.is_set():
            if await self.reload():
                log.info("%d node keys pinned", len(self.keyring.pins))
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(self.period, 1.0))
        return False

    async def pin_wanted(self) -> None:
        """Store the keys seen first; read the pins back when another fencer was first."""
        conflict = False
        for node, (public, _) in list(self.keyring.wanted.items()):
            try:
                created = await self.store.pin_node_key(self.namespace, node, public, self.identity)
            except ClusterError as err:
                log.warning("cannot pin the key of node %s: %s", node, err)
                return
            if created:
                log.info("node %s: key %s pinned on first sight", node, fingerprint(public))
                self.keyring.pinned(node, public)
            else:
                self.keyring.wanted.pop(node, None)
                conflict = True
        if conflict:
            await self.reload()

    async def run(self, stop: asyncio.Event) -> None:
        """Pin and reload until `stop` (after `load`)."""
        while not stop.is_set():
            if self.keyring.wanted:
                await self.pin_wanted()
            stale = self._loaded_at is None or self.clock() - self._loaded_at >= self.reload_period
            if stale:
                await self.reload()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.period)
