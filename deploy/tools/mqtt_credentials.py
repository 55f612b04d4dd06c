#!/usr/bin/env python3
"""Make the MQTT credentials of a nodefence installation: one password per node, one heartbeat key.

    kubectl get nodes -o name | sed 's,^node/,,' | xargs deploy/tools/mqtt_credentials.py -o creds

writes `creds/agents/<node>` (a random password per node, kept if the file exists, so adding a
node rotates nobody), `creds/passwd` (the broker's password file: mosquitto's PBKDF2-SHA512
`$7$` hashes, as `mosquitto_passwd` writes them) and `creds/heartbeat-key` (the cluster's
heartbeat signing key: 32 random bytes as hex, kept if the file exists), then prints the kubectl
commands that load them into the Secrets `nodefence-mqtt-agents`, `nodefence-mqtt-broker` and
`nodefence-heartbeat-key`. Python stdlib only; no secret ever appears on the terminal.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import sys
from pathlib import Path

ITERATIONS = 101  # mosquitto_passwd's own default for $7$
SALT_BYTES = 12
HEARTBEAT_KEY_BYTES = 32  # the agent's minimum (auth.heartbeat_key_file)
# A node name is the MQTT username and a Secret key: DNS-1123 subdomain.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """The `$7$` password-file hash of `password` (PBKDF2-HMAC-SHA512, 101 rounds)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    b64 = base64.b64encode
    return f"$7${ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def verify(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash (for checks and tests)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return secrets.compare_digest(mine, digest)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def make(out: Path, nodes: list[str]) -> dict[str, str]:
    """Create or complete `out/agents/<node>` and rewrite `out/passwd`; returns node -> hash."""
    agents = out / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for node in nodes:
        file = agents / node
        if file.exists():
            password = file.read_text(encoding="utf-8").strip()
        else:
            password = secrets.token_urlsafe(24)
            write_private(file, password)
        hashes[node] = mosquitto_hash(password)
    write_private(out / "passwd", "".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())))
    return hashes


def make_heartbeat_key(out: Path) -> Path:
    """Create `out/heartbeat-key` unless it exists (rotating it is a procedure: see the guide)."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / "heartbeat-key"
    if not file.exists():
        write_private(file, secrets.token_hex(HEARTBEAT_KEY_BYTES))
    return file


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nodes", nargs="+", help="every node that runs the agent")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    args = parser.parse_args(argv)
    bad = [n for n in args.nodes if not NAME.match(n)]
    if bad:
        print(f"mqtt_credentials: not a node name: {bad[0]!r}", file=sys.stderr)
        return 2
    make(args.out, sorted(set(args.nodes)))
    make_heartbeat_key(args.out)
    out = args.out
    print(
        f"wrote {out}/agents/<node>, {out}/passwd and {out}/heartbeat-key; load them with:\n"
        f"  kubectl -n nodefence create secret generic nodefence-mqtt-agents"
        f" --from-file={out}/agents --dry-run=client -o yaml | kubectl apply -f -\n"
        f"  kubectl -n nodefence create secret generic nodefence-mqtt-broker"
        f" --from-file=passwd={out}/passwd --dry-run=client -o yaml | kubectl apply -f -\n"
        f"  kubectl -n nodefence create secret generic nodefence-heartbeat-key"
        f" --from-file=key={out}/heartbeat-key --dry-run=client -o yaml | kubectl apply -f -\n"
        f"  kubectl -n nodefence rollout restart deployment/nodefence-mqtt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
