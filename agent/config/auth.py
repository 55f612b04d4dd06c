"""The agent config's `auth:` section: signature mode, key files, the fencer's public keys.

The key files of the two roles are only named here; each role reads its own at start
(`nodefence.agent.config.key_files`). The old cluster key (`heartbeat_key_file`/`_env`) and its
rotation keys are read here, as secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodefence.agent.config.agent_options import Auth
from nodefence.agent.config.field_reader import FieldReader
from nodefence.agent.config.secret_files import relative_to
from nodefence.agent.heartbeat.node_keys import BadKey, decode_key
from nodefence.backends.spec import Secret

MIN_KEY_BYTES = 32  # the old cluster key and its rotation keys
MAX_FENCER_PUBLIC_KEYS = 4


@dataclass(frozen=True)
class AuthConfig:
    """Signatures: the mode (`nodefence.agent.heartbeat.signing.AuthMode` value) and the keys.

    The key files of the two roles are only named here; each role reads its own at start
    (`nodefence.agent.config.key_files`): a node agent has no fencer key, a fencer no node key.
    `key` and
    `also_accept` are the old cluster key and its rotation keys (the upgrade only).
    """

    mode: str = Auth.mode.default
    key: Secret | None = None
    max_skew: float = Auth.max_skew.default
    also_accept: tuple[Secret, ...] = ()
    node_key_file: str | None = None
    fencer_public_keys: tuple[bytes, ...] = ()
    fencer_key_file: str | None = None
    fencer_also_accept_files: tuple[str, ...] = ()


def read_auth(r: FieldReader, a: dict[str, Any]) -> AuthConfig:
    """The `auth:` mapping `a` (already checked for unknown fields), read with `r` at `auth`."""
    key = r.secret(a, Auth.heartbeat_key, required=False)
    publics = _fencer_publics(r, a.get("fencer_public_keys"))
    node_key = r.read(a, Auth.node_key_file)
    fencer_key = r.read(a, Auth.fencer_key_file)
    if (node_key is None) != (not publics):
        raise r.fail(
            "node_key_file" if node_key is None else "fencer_public_keys",
            "node_key_file and fencer_public_keys go together (a node signs with its own key"
            " agreed with the fencer key)",
        )
    keyed = key is not None or bool(publics) or fencer_key is not None
    mode = r.read(a, Auth.mode.with_default("required" if keyed else "off"))
    if mode != "off" and not keyed:
        raise r.fail(
            "mode",
            f"mode {mode} needs keys: node_key_file and fencer_public_keys (node agents),"
            " fencer_key_file (fencers), or the old heartbeat_key_file",
        )
    if key is not None and len(key.reveal().encode()) < MIN_KEY_BYTES:
        raise r.fail("heartbeat_key_file", f"the key must be at least {MIN_KEY_BYTES} bytes long")
    accepted = tuple(
        r.key_file(file, f"also_accept_files[{i}]", MIN_KEY_BYTES)
        for i, file in enumerate(_paths(r, a, "also_accept_files"))
    )
    return AuthConfig(
        mode,
        key,
        r.read(a, Auth.max_skew),
        accepted,
        node_key_file=None if node_key is None else str(relative_to(r.path, node_key)),
        fencer_public_keys=publics,
        fencer_key_file=None if fencer_key is None else str(relative_to(r.path, fencer_key)),
        fencer_also_accept_files=tuple(str(p) for p in _paths(r, a, "fencer_also_accept_files")),
    )


def _paths(r: FieldReader, a: dict[str, Any], name: str) -> list[Path]:
    files = a.get(name) or []
    if not isinstance(files, list):
        raise r.fail(name, "must be a list of file paths")
    paths = []
    for i, item in enumerate(files):
        if not isinstance(item, str) or not item.strip():
            raise r.fail(f"{name}[{i}]", "must be a file path")
        paths.append(relative_to(r.path, item.strip()))
    return paths


def _fencer_publics(r: FieldReader, raw: Any) -> tuple[bytes, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_FENCER_PUBLIC_KEYS:
        raise r.fail(
            "fencer_public_keys",
            f"must be a list of 1 to {MAX_FENCER_PUBLIC_KEYS} base64 public keys",
        )
    keys = []
    for i, item in enumerate(raw):
        try:
            keys.append(decode_key(item if isinstance(item, str) else ""))
        except BadKey as err:
            raise r.fail(
                f"fencer_public_keys[{i}]",
                f"not a fencer public key ({err}): copy it as deploy/tools/mqtt_credentials.py"
                " prints it",
            ) from None
    return tuple(keys)
