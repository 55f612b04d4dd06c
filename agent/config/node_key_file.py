"""The node's private key file: read it, or make it at the agent's first start. File I/O only.

The DaemonSet keeps it on the node (hostPath `/var/lib/nodefence`), so it outlives pod restarts
and rollouts: the fencers pinned its public key on first sight and believe no other. It never
leaves the node: no Secret, no API object, no log line holds it. Format: standard base64 of the
32 raw bytes and a newline, mode 0600. A file that exists but does not hold a key is an error
naming the file, never overwritten (a new key would be refused by the fencers anyway).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodefence.agent.heartbeat.node_keys import BadKey, decode_key, encode_key, private_key


class NodeKeyFileError(Exception):
    """The key file cannot be read or made; the message names the file and what to do."""


def read_key_file(path: Path) -> X25519PrivateKey:
    """The private key in `path` (base64, see the module doc); `NodeKeyFileError` otherwise."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) else "not ASCII text"
        raise NodeKeyFileError(f"{path}: cannot read the key: {why or err}") from None
    try:
        return private_key(decode_key(text))
    except BadKey as err:
        raise NodeKeyFileError(
            f"{path}: not a nodefence key ({err}); remove it only if you mean to give this node"
            " a new key (then remove its pin too: operator's guide, 'Rotating a node key')"
        ) from None


def load_or_create(path: Path) -> tuple[X25519PrivateKey, bool]:
    """(the key, whether it was made now): read `path`, or make it when it does not exist."""
    if path.exists():
        return read_key_file(path), False
    raw = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(encode_key(raw) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # A link never replaces: of two agents starting at once, the second reads the first's.
        os.link(tmp, path)
    except FileExistsError:
        return read_key_file(path), False
    except OSError as err:
        raise NodeKeyFileError(
            f"{path}: cannot make this node's key: {err.strerror or err} (the directory must"
            " be writable by the agent: see the DaemonSet's node-key volume)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return private_key(raw), True
