"""Run the real mosquitto broker on 127.0.0.1 for tests, demos and benchmarks."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

INSTALL_HINT = "mosquitto is not installed: run `apt-get install mosquitto` (Debian/Ubuntu)"


def find_mosquitto() -> str:
    """Path of the mosquitto binary; `FileNotFoundError` with an install hint when absent."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise FileNotFoundError(INSTALL_HINT)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """A mosquitto process listening on 127.0.0.1:`port`, optionally with password auth.

    `users` maps usernames to passwords (written with `mosquitto_passwd`); `acl` is the text
    of an ACL file (mosquitto syntax). Without users, anonymous clients are allowed.
    """

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        users: dict[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.users = users or {}
        self.acl = acl
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where mosquitto writes its log."""
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "max_keepalive 3600",
            # Started as root, mosquitto drops to user `mosquitto`, which cannot read our files.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            pwfile = self.workdir / "mosquitto.passwd"
            pwfile.write_text("")
            pwfile.chmod(0o600)
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self.workdir / "mosquitto.acl"
            aclfile.write_text(self.acl)
            lines.append(f"acl_file {aclfile}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout} s")

    @property
    def pid(self) -> int:
        """The mosquitto process id (0 when not running)."""
        return self._proc.pid if self._proc is not None else 0

    @property
    def running(self) -> bool:
        """True while the mosquitto process runs."""
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a power loss of its machine does (idempotent)."""
        self.stop(hard=True)

    def stop(self, hard: bool = False) -> None:
        """Stop the broker (idempotent); `hard`: SIGKILL instead of a clean SIGTERM."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if hard:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port (clients see a broker outage)."""
        self.stop()
        self.start()
