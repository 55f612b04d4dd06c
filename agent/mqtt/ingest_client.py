"""The leader's heartbeat ingest: a subscribe-only MQTT 3.1.1 connection on asyncio streams.

aiomqtt (paho underneath) reads one packet per wake-up with several syscalls each, which
costs about a core at 10,000 heartbeats a second. This reader takes whatever the socket holds
in one read and parses every frame in it, so the leader's cost per heartbeat is the decoding
and bookkeeping, not the transport. Publishing (probe requests, the status view) still goes
through aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.mqtt.frames import (
    CONNACK,
    CONNACK_ERRORS,
    DISCONNECT_FRAME,
    PINGREQ_FRAME,
    PUBLISH,
    SUBACK,
    FrameReader,
    ProtocolError,
    connect_frame,
    parse_publish,
    subscribe_frame,
)

READ_SIZE = 1 << 18


class IngestError(Exception):
    """The ingest connection failed or was lost (the message says why, never a secret)."""


def _tls(broker: BrokerConfig) -> ssl.SSLContext | None:
    if not (broker.ca_file or broker.cert_file):
        return None
    ctx = ssl.create_default_context(cafile=broker.ca_file)
    if broker.cert_file:
        ctx.load_cert_chain(broker.cert_file, broker.key_file)
    return ctx


async def subscribe_stream(
    broker: BrokerConfig,
    client_id: str,
    filters: list[str],
    on_message: Callable[[str, bytes], None],
    on_up: Callable[[], None],
    connect_timeout: float = 5.0,
) -> None:
    """Connect, subscribe and deliver every PUBLISH until the connection ends (then raise
    `IngestError`). `on_up` is called once the subscription is acknowledged."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(broker.host, broker.port, ssl=_tls(broker)),
            connect_timeout,
        )
    except (OSError, TimeoutError) as err:
        raise IngestError(f"cannot connect to {broker.host}:{broker.port}: {err}") from None
    password = broker.password.reveal() if broker.password else None
    pinger: asyncio.Task[None] | None = None
    try:
        writer.write(connect_frame(client_id, broker.keepalive, broker.username, password))
        writer.write(subscribe_frame(1, filters))
        await writer.drain()

        async def ping() -> None:
            while True:
                await asyncio.sleep(max(0.5, broker.keepalive / 2))
                writer.write(PINGREQ_FRAME)
                await writer.drain()

        pinger = asyncio.create_task(ping())
        frames = FrameReader()
        connected = False
        while True:
            try:
                async with asyncio.timeout(broker.keepalive * 1.5 + connect_timeout):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                raise IngestError("the broker went silent (no PINGRESP)") from None
            if not data:
                raise IngestError("the broker closed the connection")
            for frame in frames.feed(data):
                if frame.kind == PUBLISH:
                    topic, payload = parse_publish(frame)
                    on_message(topic, payload)
                elif frame.kind == CONNACK:
                    code = frame.body[1] if len(frame.body) >= 2 else 255
                    if code != 0:
                        raise IngestError(
                            "broker refused the connection: "
                            + CONNACK_ERRORS.get(code, f"code {code}")
                        )
                    connected = True
                elif frame.kind == SUBACK:
                    if not connected or any(b == 0x80 for b in frame.body[2:]):
                        raise IngestError("broker refused the subscription (check the ACL)")
                    on_up()
    except ProtocolError as err:
        raise IngestError(f"broker protocol error: {err}") from None
    except (OSError, ConnectionError) as err:
        raise IngestError(f"connection lost: {err}") from None
    finally:
        if pinger is not None:
            pinger.cancel()
        with contextlib.suppress(Exception):
            writer.write(DISCONNECT_FRAME)
            writer.close()
