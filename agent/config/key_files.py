"""The keys each role reads at start, from the files its config names. File I/O at the edge.

A node agent holds its own key (made at its first start, `nodefence.agent.config.node_key_file`),
agreed with the fencer public keys of its config (`NodeSigner`), and, during an upgrade only, the
old cluster key. A fencer holds the fencer key and its rotation keys (`Keyring`) and, during an
upgrade, the old cluster key. Neither reads the other's files: the DaemonSet mounts no fencer
key, the fencer Deployment has no node key. Errors are `ConfigError`s naming the field and file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodefence.agent.config.agent_file import AgentConfig, ConfigError
from nodefence.agent.config.node_key_file import NodeKeyFileError, load_or_create
from nodefence.agent.heartbeat.node_keys import (
    BadKey,
    Keyring,
    NodeSigner,
    decode_key,
    fingerprint,
    private_key,
)
from nodefence.agent.heartbeat.signing import node_key

log = logging.getLogger("nodefence.keys")


def node_signer(cfg: AgentConfig, node: str) -> NodeSigner | None:
    """This node's signer (its key made now if missing), or None when `auth.node_key_file`
    is not set or signatures are off."""
    auth = cfg.auth
    if auth.mode == "off" or auth.node_key_file is None:
        return None
    try:
        own, made = load_or_create(Path(auth.node_key_file))
    except NodeKeyFileError as err:
        raise ConfigError(cfg.path, "auth.node_key_file", str(err)) from None
    try:
        signer = NodeSigner(node, own, auth.fencer_public_keys)
    except BadKey as err:
        raise ConfigError(
            cfg.path,
            "auth.fencer_public_keys",
            f"not a usable fencer public key ({err}): put yours there, as"
            " deploy/tools/mqtt_credentials.py prints it",
        ) from None
    log.info(
        "node %s: %s key, public key fingerprint %s (the fencers pin it on first sight)",
        node,
        "made a new" if made else "using its",
        fingerprint(signer.public),
    )
    return signer


def legacy_key(cfg: AgentConfig, node: str) -> bytes | None:
    """`node`'s key derived from the old cluster key (the upgrade only), or None."""
    key = cfg.auth.key
    if key is None or cfg.auth.mode == "off":
        return None
    return node_key(key.reveal().encode(), node)


def _fencer_key(cfg: AgentConfig, field: str, path: str) -> X25519PrivateKey:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) else "not ASCII text"
        raise ConfigError(cfg.path, field, f"cannot read {path}: {why or err}") from None
    try:
        return private_key(decode_key(text))
    except BadKey as err:
        raise ConfigError(
            cfg.path,
            field,
            f"{path} does not hold a fencer key ({err}): make one with"
            " deploy/tools/mqtt_credentials.py",
        ) from None


def fencer_keyring(cfg: AgentConfig) -> Keyring | None:
    """The fencer's keyring (no pins yet), or None without `auth.fencer_key_file` or with
    signatures off."""
    auth = cfg.auth
    if auth.mode == "off" or auth.fencer_key_file is None:
        return None
    keys = [_fencer_key(cfg, "auth.fencer_key_file", auth.fencer_key_file)]
    for i, path in enumerate(auth.fencer_also_accept_files):
        keys.append(_fencer_key(cfg, f"auth.fencer_also_accept_files[{i}]", path))
    return Keyring(keys)
