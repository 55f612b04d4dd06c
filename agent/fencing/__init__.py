"""Fencing one node: the pure state machine, its proof rules and the executor that drives it."""
