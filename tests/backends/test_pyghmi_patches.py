"""pyghmi is changed only when the IPMI worker asks
(`nodefence.backends.ipmi.pyghmi_patches.apply`)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
from pyghmi.ipmi.private import session
import nodefence.backends.ipmi.console  # the console imports pyghmi, and must not change it
import nodefence.backends.ipmi.worker
original = session._io_wait
assert not hasattr(session, "_nodefence_wait_fix"), "patched on import"
assert session.KEEPALIVE_SESSIONS is not session.WAITING_SESSIONS
from nodefence.backends.ipmi import pyghmi_patches as ipmi_pyghmi_patches
ipmi_pyghmi_patches.apply()
sliced = session._io_wait
assert sliced is not original
assert session.KEEPALIVE_SESSIONS is session.WAITING_SESSIONS
ipmi_pyghmi_patches.apply()
assert session._io_wait is sliced, "a second apply wrapped the wait again"
print("ok")
"""


def test_importing_the_backend_leaves_pyghmi_alone_and_apply_changes_it_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
