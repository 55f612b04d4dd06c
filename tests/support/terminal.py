"""A command run on a pseudo-terminal, as a person runs it: its stdin, stdout and stderr are
the terminal, which is its controlling terminal, so a typed Ctrl-C (\\x03) reaches it as the
line discipline sends it (SIGINT to the foreground process group). Read without blocking the
event loop: the BMC emulators of a test answer in that same loop."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import termios
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _controlling_terminal() -> None:
    # After setsid (start_new_session): the terminal on stdin becomes this session's.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # A person's shell starts a command with Ctrl-C at its default. A test run started in the
    # background (a non-interactive shell's `&`) ignores SIGINT, every child inherits that, and
    # Python then leaves it ignored: the command would never see the Ctrl-C typed at it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """`python -m nodefence.agent.cli.main ARGS` on a fresh pseudo-terminal (see the module doc)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "KUBECONFIG": os.devnull}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodefence.agent.cli.main", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_controlling_terminal,
            env={**full_env, **(env or {})},
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.text = ""

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except (BlockingIOError, OSError):  # OSError: EIO once the child closed it
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    async def expect(self, words: str, timeout: float = 30.0) -> None:
        """Wait until the screen shows `words` (fails with the screen after `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while words not in self.text:
            self._read()
            if words in self.text:
                return
            if loop.time() > deadline or self.proc.poll() is not None:
                self._read()
                if words in self.text:
                    return
                raise AssertionError(f"{words!r} never shown; the screen:\n{self.text}")
            await asyncio.sleep(0.02)

    def type(self, keys: bytes) -> None:
        """Type on the keyboard (b"\\x03" is Ctrl-C)."""
        os.write(self.master, keys)

    async def exit_code(self, timeout: float = 30.0) -> int:
        """Wait for the command to end; its exit code (the rest of the screen read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            self._read()
            if loop.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"still running after {timeout} s; the screen:\n{self.text}")
            await asyncio.sleep(0.02)
        self._read()
        os.close(self.master)
        return int(self.proc.returncode)
