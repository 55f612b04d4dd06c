"""Deterministic simulation of the leader side (`nodefence-hwsim simulate`, docs/simulation.md).

The real election, leader side, executor and power walk run on a virtual-time event loop
(`vloop`) with every edge simulated in memory (`broker`, `api` over `apiserver`, `bmc`,
`machines` and `agents`, `vms`, `candidates`); `faults` plays a seeded schedule, `invariants`
checks every step, `runner` plays one seed and `report` many.
"""
