"""Keep the BMC inventory current: reload it when its file, or a password or CA file it
names, changes (a rotated Secret); keep the last good one when a new version is broken (and
say so once)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from nodefence.agent.config.inventory_file import Inventory, InventoryError, load_inventory

log = logging.getLogger("nodefence.inventory")


class InventoryWatcher:
    """`current()` returns the newest valid inventory; cheap to call often (stat only)."""

    def __init__(self, path: str, on_rejected: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_rejected = on_rejected
        self._stamp: tuple[tuple[float, int] | None, ...] | None = None
        self._inventory: Inventory | None = None
        self.rejected: str = ""
        self.current()

    def _stamps(self) -> tuple[tuple[float, int] | None, ...]:
        sources = self._inventory.sources if self._inventory is not None else ()
        return tuple(_stat(p) for p in (self.path, *sources))

    def current(self) -> Inventory | None:
        """The inventory, reloaded if the mtime or size of its file or of a file it names
        changed."""
        stamp = self._stamps()
        if stamp[0] is not None and stamp == self._stamp:
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
        # The file as it was before reading it, the files it names as they are now.
        self._stamp = (stamp[0], *(_stat(p) for p in inventory.sources))
        self.rejected = ""
        return inventory

    def nodes(self) -> frozenset[str]:
        """Names of the nodes the inventory can fence."""
        inv = self.current()
        return frozenset(inv.nodes) if inv else frozenset()


def _stat(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)
