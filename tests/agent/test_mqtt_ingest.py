"""The leader's subscribe-only MQTT reader: framing (pure) and against real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.config.agent_file import BrokerConfig
from nodefence.agent.mqtt.frames import (
    PUBLISH,
    FrameReader,
    ProtocolError,
    _remaining,
    _string,
    parse_publish,
)
from nodefence.agent.mqtt.ingest_client import IngestError, subscribe_stream
from nodefence.backends.spec import Secret
from nodefence.hwsim.broker import MosquittoBroker
from tests.support.brokers import running_broker


def publish_frame(topic: str, payload: bytes) -> bytes:
    body = _string(topic) + payload
    return bytes([PUBLISH << 4]) + _remaining(len(body)) + body


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=300)), max_size=30),
    st.integers(1, 50),
)
def test_frames_split_anywhere_are_reassembled_in_order(
    messages: list[tuple[str, bytes]], chunk: int
) -> None:
    stream = b"".join(publish_frame(t, p) for t, p in messages)
    reader, got = FrameReader(), []
    for i in range(0, len(stream), chunk):
        got += [parse_publish(f) for f in reader.feed(stream[i : i + chunk])]
    assert got == messages


def test_a_huge_or_malformed_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(bytes([PUBLISH << 4, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    with pytest.raises(ProtocolError):
        FrameReader().feed(bytes([PUBLISH << 4]) + _remaining(5 << 20))


async def _collect(broker: BrokerConfig, want: int, timeout: float = 20) -> list[str]:
    got: list[str] = []
    up, done = asyncio.Event(), asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        got.append(topic)
        if len(got) >= want:
            done.set()

    task = asyncio.create_task(subscribe_stream(broker, "ingest-test", ["t/+"], on_message, up.set))
    try:
        await asyncio.wait_for(up.wait(), 5)
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username=broker.username,
            password=broker.password.reveal() if broker.password else None,
        ) as pub:
            for i in range(want):
                await pub.publish(f"t/{i % 7}", b"x" * 40)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, IngestError):
            await task
    return got


async def test_every_message_published_arrives(tmp_path: Path) -> None:
    with running_broker(tmp_path / "mqtt") as broker:
        got = await _collect(BrokerConfig(port=broker.port), 3000)
    assert len(got) == 3000


async def test_wrong_password_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    with running_broker(tmp_path / "mqtt", users={"leader": "right-pw"}) as broker:
        bad = BrokerConfig(port=broker.port, username="leader", password=Secret("wrong-pw"))
        with pytest.raises(IngestError) as info:
            await subscribe_stream(bad, "x", ["t/+"], lambda t, p: None, lambda: None)
        good = BrokerConfig(port=broker.port, username="leader", password=Secret("right-pw"))
        got = await _collect(good, 10)
    assert "bad user name or password" in str(info.value) or "not authorised" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    assert len(got) == 10


async def test_a_broker_that_goes_away_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "mqtt")
    broker.start()
    up = asyncio.Event()
    task = asyncio.create_task(
        subscribe_stream(BrokerConfig(port=broker.port), "x", ["t/+"], lambda t, p: None, up.set)
    )
    await asyncio.wait_for(up.wait(), 5)
    broker.stop()
    with pytest.raises(IngestError):
        await asyncio.wait_for(task, 10)
