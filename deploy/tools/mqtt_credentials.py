#!/usr/bin/env python3
"""Make the credentials of a nodefence installation: MQTT passwords and the fencer key.

    kubectl get nodes -o name | sed 's,^node/,,' | xargs deploy/tools/mqtt_credentials.py -o creds

writes `creds/agents/<node>` (a random MQTT password per node, kept if the file exists, so adding
a node rotates nobody), `creds/fencer-password` (the fencers' MQTT password, user
`nodefence-fencer`), `creds/passwd` (the broker's password file: mosquitto's PBKDF2-SHA512 `$7$`
hashes, as `mosquitto_passwd` writes them) and `creds/fencer-key` (the fencer key: an X25519
private key, standard base64 of 32 random bytes; kept if the file exists), then prints the
kubectl commands that load them into the Secrets `nodefence-mqtt-agents`, `nodefence-mqtt-fencer`,
`nodefence-mqtt-broker` and `nodefence-fencer-key`, and the fencer key's public half for the
agent config (`auth.fencer_public_keys`). Python stdlib only (X25519 by RFC 7748's ladder, run
once on your machine); no secret ever appears on the terminal.
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
FENCER_USER = "nodefence-fencer"  # the fencers' broker user (deploy/base/mosquitto.acl)
# A node name is the MQTT username and a Secret key: DNS-1123 subdomain.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_P = 2**255 - 19


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (RFC 7748, scalar times the base point)."""
    k = bytearray(private)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    scalar = int.from_bytes(k, "little")
    x1, x2, z2, x3, z3, swap = 9, 1, 0, 9, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + 121665 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


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


def _password(file: Path) -> str:
    """The password in `file`, made (random) when it does not exist."""
    if file.exists():
        return file.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(24)
    write_private(file, password)
    return password


def make(out: Path, nodes: list[str]) -> dict[str, str]:
    """Create or complete `out/agents/<node>` and `out/fencer-password`, rewrite `out/passwd`;
    returns user -> hash (the nodes and `nodefence-fencer`)."""
    agents = out / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    hashes = {node: mosquitto_hash(_password(agents / node)) for node in nodes}
    hashes[FENCER_USER] = mosquitto_hash(_password(out / "fencer-password"))
    write_private(out / "passwd", "".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())))
    return hashes


def make_fencer_key(out: Path) -> tuple[Path, str]:
    """Create `out/fencer-key` unless it exists (rotating it is a procedure: see the guide);
    returns the file and the key's public half (base64) for `auth.fencer_public_keys`."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / "fencer-key"
    if not file.exists():
        write_private(file, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    private = base64.b64decode(file.read_text(encoding="ascii").strip(), validate=True)
    return file, base64.b64encode(x25519_public(private)).decode()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nodes", nargs="+", help="every node that runs the agent")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    args = parser.parse_args(argv)
    bad = [n for n in args.nodes if not NAME.match(n) or n == FENCER_USER]
    if bad:
        print(f"mqtt_credentials: not a node name: {bad[0]!r}", file=sys.stderr)
        return 2
    make(args.out, sorted(set(args.nodes)))
    _, public = make_fencer_key(args.out)
    out = args.out
    apply = "--dry-run=client -o yaml | kubectl apply -f -"
    print(
        f"wrote {out}/agents/<node>, {out}/fencer-password, {out}/passwd and {out}/fencer-key;"
        " load them with:\n"
        f"  kubectl -n nodefence create secret generic nodefence-mqtt-agents"
        f" --from-file={out}/agents {apply}\n"
        f"  kubectl -n nodefence create secret generic nodefence-mqtt-fencer"
        f" --from-file=password={out}/fencer-password {apply}\n"
        f"  kubectl -n nodefence create secret generic nodefence-mqtt-broker"
        f" --from-file=passwd={out}/passwd {apply}\n"
        f"  kubectl -n nodefence create secret generic nodefence-fencer-key"
        f" --from-file=key={out}/fencer-key {apply}\n"
        f"  kubectl -n nodefence rollout restart statefulset/nodefence-mqtt\n"
        f"and put the fencer key's public half in your agent.yaml:\n"
        f"  auth:\n    fencer_public_keys: [{public}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
