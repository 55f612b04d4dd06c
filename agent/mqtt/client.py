"""Build aiomqtt clients from the agent config (the one place that knows broker options)."""

from __future__ import annotations

import aiomqtt

from nodefence.agent.config.agent_file import BrokerConfig


def make_client(
    broker: BrokerConfig,
    identifier: str,
    will: aiomqtt.Will | None = None,
    timeout: float = 5.0,
) -> aiomqtt.Client:
    """An unconnected aiomqtt client for `broker` (use it with `async with`)."""
    tls = None
    if broker.ca_file or broker.cert_file:
        tls = aiomqtt.TLSParameters(
            ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file
        )
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password.reveal() if broker.password else None,
        identifier=identifier,
        will=will,
        keepalive=broker.keepalive,
        tls_params=tls,
        timeout=timeout,
        clean_session=True,
    )
