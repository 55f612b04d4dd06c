"""The peer probe itself: a peer checks whether a suspect's agent or kubelet answers.

The I/O half of `agent.peers` (whose requests, results and peer choice are pure): each target
of a `ProbeRequest` at once, the agent's health endpoint over HTTP (`agent.health.probe`), the
kubelet port by a TCP connect. Run by `agent.probe_responder` on the peers the leader asks.
"""

from __future__ import annotations

import asyncio

from agent.health import probe as probe_agent
from agent.peers import ProbeRequest


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
