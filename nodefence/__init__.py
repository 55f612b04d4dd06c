"""nodefence: fencing and failover for Kubernetes clusters that run VMs.

The project keeps the folders it was designed with (`agent/`, `backends/`, `hwsim/` at the top of
the repository); installed, they are `nodefence.agent`, `nodefence.backends` and
`nodefence.hwsim` (pyproject.toml maps them), so they cannot collide with another project's
`agent`. In a checkout, `nodefence/agent` and its siblings are links to those folders, so the
same names import without installing.
"""
