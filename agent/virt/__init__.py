"""The virtualization layer: Deckhouse Virtualization and KubeVirt behind one driver."""
