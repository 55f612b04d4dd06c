"""The emulated Deckhouse Virtualization controller: VMs, launchers, migrations."""
