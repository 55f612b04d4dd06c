"""The broker's shipped config and ACL, on a real mosquitto, let a node speak only for itself
and only the fencers ask for probes; the credentials tool makes what mosquitto and the agent
read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

from nodefence.agent.config.agent_file import parse_config
from nodefence.agent.config.key_files import fencer_keyring, node_signer
from nodefence.agent.heartbeat.node_keys import private_key, public_of
from nodefence.hwsim.broker import find_mosquitto, free_port
from tests.support.deploy import FENCER, WORKLOADS, find, mqtt_tool, pod_spec, render


def start_shipped_broker(workdir: Path, passwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto with the rendered mosquitto.conf and ACL (paths and port made local)."""
    data = find(render("base"), "ConfigMap", "nodefence-mqtt-config")["data"]
    (workdir / "acl").write_text(data["acl"])
    port = free_port()
    conf = (
        data["mosquitto.conf"]
        .replace("/mosquitto/secret/passwd", str(passwd))
        .replace("/mosquitto/config/acl", str(workdir / "acl"))
        .replace("listener 1883", f"listener {port} 127.0.0.1")
    )
    # Started as root, mosquitto would switch to user `mosquitto`, who cannot read our files.
    conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
    (workdir / "mosquitto.conf").write_text(conf)
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(workdir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "mosquitto.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("mosquitto did not start")


async def test_through_the_shipped_broker_a_node_can_speak_only_for_itself(
    tmp_path: Path,
) -> None:
    tool = mqtt_tool()
    tool.make(tmp_path / "creds", ["node-1", "node-2"])
    password = {n: (tmp_path / "creds" / "agents" / n).read_text() for n in ("node-1", "node-2")}
    password[FENCER] = (tmp_path / "creds" / "fencer-password").read_text()
    proc, port = start_shipped_broker(tmp_path, tmp_path / "creds" / "passwd")
    base = "nodefence/v1/c1"
    forged = [
        f"{base}/heartbeat/node-2",
        f"{base}/status/node-2",
        f"{base}/probe-result/node-2",
        f"{base}/identity/node-2",
        f"{base}/probe/node-3",  # only the fencers make peers probe
        f"{base}/leader/view",  # ... and publish the view
        f"{base}/fencer/node-1",  # ... and say they are there
        "nodefence/v1/c1",  # nor anything outside its topics
    ]
    own = [
        f"{base}/heartbeat/node-1",
        f"{base}/status/node-1",
        f"{base}/probe-result/node-1",
        f"{base}/identity/node-1",
    ]
    fencer_own = [f"{base}/probe/node-3", f"{base}/leader/view", f"{base}/fencer/ctrl-1"]

    def client(user: str | None, secret: str | None, name: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", port, username=user, password=secret, identifier=name, timeout=5
        )

    async def drain(sub: aiomqtt.Client, count: int) -> list[str]:
        got: list[str] = []
        async with asyncio.timeout(5):
            async for message in sub.messages:
                got.append(str(message.topic))
                if len(got) == count:
                    break
        return got

    try:
        async with client(FENCER, password[FENCER], "fencer") as fencer:
            for kind in ("heartbeat", "status", "probe-result", "identity", "probe", "fencer"):
                await fencer.subscribe(f"{base}/{kind}/+", qos=1)
            await fencer.subscribe(f"{base}/leader/view", qos=1)
            async with client("node-2", password["node-2"], "node-2") as node2:
                # A node hears the fencers' requests and the view, and no other node.
                for kind in ("heartbeat", "status", "probe-result", "identity", "probe"):
                    await node2.subscribe(f"{base}/{kind}/+", qos=1)
                await node2.subscribe(f"{base}/leader/view", qos=1)
                async with client("node-1", password["node-1"], "node-1") as node1:
                    # The watchdog's broker contact: an agent hears its own heartbeat come back.
                    await node1.subscribe(f"{base}/heartbeat/node-1", qos=1)
                    for topic in forged + own:  # in order, at QoS 1: forged ones come first
                        await node1.publish(topic, b"x", qos=1)
                    async with asyncio.timeout(5):
                        echo = await anext(aiter(node1.messages))
                    assert str(echo.topic) == f"{base}/heartbeat/node-1"
                assert await drain(fencer, len(own)) == own  # no forged one came before
                for topic in fencer_own:
                    await fencer.publish(topic, b"y", qos=1)
                assert await drain(node2, 2) == fencer_own[:2]  # nothing of node-1's
            assert await drain(fencer, len(fencer_own)) == fencer_own
        for user, secret in (("node-1", "wrong"), (None, None), ("node-3", password["node-1"])):
            with pytest.raises(aiomqtt.MqttError):
                async with client(user, secret, "intruder"):
                    pass
        with pytest.raises(aiomqtt.MqttError):  # a node's password is not the fencers'
            async with client(FENCER, password["node-1"], "intruder"):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def test_the_credentials_tool_keeps_existing_passwords_and_hashes_like_mosquitto_passwd(
    tmp_path: Path,
) -> None:
    tool = mqtt_tool()
    tool.make(tmp_path, ["node-1"])
    first = (tmp_path / "agents" / "node-1").read_text()
    hashes = tool.make(tmp_path, ["node-1", "node-2"])  # adding a node rotates nobody
    assert (tmp_path / "agents" / "node-1").read_text() == first
    assert tool.verify(first, hashes["node-1"])
    assert oct((tmp_path / "passwd").stat().st_mode & 0o777) == "0o600"
    if shutil.which("mosquitto_passwd"):  # the reference implementation agrees
        ref = tmp_path / "ref"
        ref.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(ref), "u", "pw"], check=True)
        assert tool.verify("pw", ref.read_text().strip().split(":", 1)[1])


def test_the_credentials_tool_makes_a_fencer_key_both_roles_accept_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = mqtt_tool()
    out = tmp_path / "creds"
    assert tool.main(["-o", str(out), "node-1", "node-2"]) == 0
    key_file = out / "fencer-key"
    key = key_file.read_text().strip()
    assert len(base64.b64decode(key, validate=True)) == 32  # X25519, base64 as WireGuard's
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    printed = capsys.readouterr().out
    (public,) = re.findall(r"fencer_public_keys: \[(\S+)\]", printed)
    doc = {
        "auth": {
            "fencer_key_file": str(key_file),
            "node_key_file": str(tmp_path / "node.key"),
            "fencer_public_keys": [public],
        }
    }
    cfg = parse_config(doc, path=tmp_path / "agent.yaml", env={})
    assert cfg.auth.mode == "required"
    keyring, signer = fencer_keyring(cfg), node_signer(cfg, "node-1")
    assert keyring is not None and signer is not None
    assert keyring.fencer_publics == (base64.b64decode(public),)  # the printed half is its own
    assert tool.main(["-o", str(out), "node-3"]) == 0  # adding a node changes no key
    assert key_file.read_text().strip() == key
    printed += capsys.readouterr().out
    for secret in (key, (out / "fencer-password").read_text().strip()):
        assert secret not in printed
    # The commands it prints load every Secret the pods mount (but the inventory, yours to write).
    loaded = set(re.findall(r"create secret generic (\S+)", printed))
    docs = render("overlays/example")
    mounted = {
        v["secret"]["secretName"]
        for kind in WORKLOADS
        for v in pod_spec(docs, kind)["volumes"]
        if "secret" in v
    }
    assert loaded == mounted - {"nodefence-inventory"}
    assert tool.main(["-o", str(out), FENCER]) == 2  # the fencers' user is not a node name


def test_the_credentials_tool_computes_x25519_as_the_agent_does() -> None:
    tool = mqtt_tool()
    for seed in range(16):
        raw = hashlib.sha256(f"key {seed}".encode()).digest()
        assert tool.x25519_public(raw) == public_of(private_key(raw))
