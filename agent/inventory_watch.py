"""Keep the BMC inventory current: reload it when its file changes, keep the last good one
when a new version is broken (and say so once)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from agent.inventory import Inventory, InventoryError, load_inventory

log = logging.getLogger("nodefence.inventory")


class InventoryWatcher:
    """`current()` returns the newest valid inventory; cheap to call often (stat only)."""

    def __init__(self, path: str, on_rejected: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_rejected = on_rejected
        self._stamp: tuple[float, int] | None = None
        self._inventory: Inventory | None = None
        self.rejected: str = ""
        self.current()

    def current(self) -> Inventory | None:
        """The inventory, reloaded if the file's mtime or size changed."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return self._inventory
        self._stamp = stamp
        try:
            inventory = load_inventory(self.path)
        except InventoryError as err:
            self.rejected = str(err)
            log.error("new inventory rejected, keeping the previous one: %s", err)
            if self.on_rejected is not None:
                self.on_rejected(str(err))
            return self._inventory
        if self._inventory is not None:
            log.info("inventory reloaded: %d nodes", len(inventory.nodes))
        self._inventory = inventory
        self.rejected = ""
        return inventory

    def nodes(self) -> frozenset[str]:
        """Names of the nodes the inventory can fence."""
        inv = self.current()
        return frozenset(inv.nodes) if inv else frozenset()
