"""Reading a secret from a file or an environment variable, for the config and the inventory.

A secret is wrapped in `Secret` the moment it is read; an error says which file or variable
failed and why, never what it held.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nodefence.agent.brief import brief
from nodefence.backends.spec import Secret


class SecretUnavailable(ValueError):
    """A secret could not be read; the message names the file or variable, not the value."""


def relative_to(path: Path, value: str) -> Path:
    """`value` as a path, `~` expanded, relative paths taken from the directory of `path`."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~user/..." of a user that does not exist: read it as written
        p = Path(value)
    return p if p.is_absolute() else path.parent / p


def not_readable(err: ValueError) -> str:
    """Why a file name or content could not be used (a `ValueError` from reading it)."""
    return "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "not a valid file name"


def read_secret_file(file: Path, min_bytes: int = 1) -> Secret:
    """The file's text without its trailing newline; `SecretUnavailable` when it cannot be
    read, is empty, or is shorter than `min_bytes`."""
    try:
        value = file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path, or not UTF-8
        problem = err.strerror if isinstance(err, OSError) else not_readable(err)
        raise SecretUnavailable(f"cannot read {brief(str(file))}: {problem or err}") from None
    if len(value.encode()) < min_bytes:
        raise SecretUnavailable(
            f"{file} is empty"
            if min_bytes <= 1
            else f"the key in {file} must be at least {min_bytes} bytes long"
        )
    return Secret(value)


def read_secret_env(var: str, env: Mapping[str, str]) -> Secret:
    """The variable's value; `SecretUnavailable` when it is unset or empty."""
    value = env.get(var)
    if not value:
        raise SecretUnavailable(f"environment variable {var} is not set")
    return Secret(value)
