"""Which nodefence this is: version, commit, build date, Python and the libraries it talks
through (`nodefence --version`, the `nodefence_build_info` metric, bug reports).

The commit and build date come from the image (`NODEFENCE_COMMIT`, `NODEFENCE_BUILD_DATE`,
set by the Containerfile's build arguments), else from the git checkout this runs from, else
"unknown".
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from nodefence.agent import __version__

LIBRARIES = ("pyghmi", "redfish", "kubernetes", "aiomqtt", "cryptography", "prometheus-client")


@cache
def commit() -> str:
    """The source commit (short), or "unknown"."""
    given = os.environ.get("NODEFENCE_COMMIT", "").strip()
    if given:
        return given[:12]
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def build_date() -> str:
    """When the image was built (UTC), or "unknown" outside an image."""
    return os.environ.get("NODEFENCE_BUILD_DATE", "").strip() or "unknown"


def libraries() -> dict[str, str]:
    """The installed version of each library nodefence talks through ("missing" if absent)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def describe() -> str:
    """`nodefence --version`: the first line as before, then the details."""
    libs = ", ".join(f"{k} {v}" for k, v in libraries().items())
    return (
        f"nodefence {__version__}\n"
        f"commit {commit()}, built {build_date()}\n"
        f"Python {platform.python_version()}; {libs}"
    )
