"""Peer probes: other agents asked, over the node network, whether a silent node is alive."""
