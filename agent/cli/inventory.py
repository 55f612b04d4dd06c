"""The BMC inventory as the commands load and show it: errors said on stderr, addresses."""

from __future__ import annotations

from typing import TextIO

from nodefence.agent.config.inventory_file import Inventory, InventoryError, load_inventory
from nodefence.backends.spec import DeviceSpec


def load_or_say(path: str, err: TextIO) -> Inventory | None:
    """The inventory at `path`, or None after saying on `err` what is wrong with it."""
    try:
        return load_inventory(path)
    except InventoryError as e:
        print(f"nodefence: inventory error: {e}", file=err)
        return None


def device_address(dev: DeviceSpec) -> str:
    """Where a device is reached, as the tables show it ("-" for a fence agent without one)."""
    if dev.address is None:
        return "-"
    return dev.address if dev.port is None else f"{dev.address}:{dev.port}"
