"""Heartbeats: the node's sender, the wire format, signatures and per-node keys."""
