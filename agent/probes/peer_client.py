"""The peer probe itself: a peer checks whether a suspect's agent or kubelet answers.

The I/O half of `nodefence.agent.probes.peers` (whose requests, results and peer choice are pure):
each target of a `ProbeRequest` at once, the agent's health endpoint over HTTP
(`nodefence.agent.node.health_server.probe`), the kubelet port by a TCP connect. Run by
`nodefence.agent.probes.responder_loop` on the peers the leader asks.
"""

from __future__ import annotations

import asyncio

from nodefence.agent.node.health_server import probe as probe_agent
from nodefence.agent.probes.peers import ProbeRequest


async def _tcp_connect(host: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
        return True
    except (OSError, TimeoutError):
        return False


async def run_probe(req: ProbeRequest, timeout: float) -> bool:
    """Probe every target at once; True when any answers within `timeout` seconds."""
    if not req.targets:
        return False
    checks = [
        probe_agent(t.host, t.port, timeout)
        if t.kind == "agent"
        else _tcp_connect(t.host, t.port, timeout)
        for t in req.targets
    ]
    return any(await asyncio.gather(*checks))
