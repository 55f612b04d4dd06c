"""`nodefence-hwsim bmcs`, `fault` and `demo` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


async def _wait_for(path: Path, proc: asyncio.subprocess.Process, deadline: float) -> None:
    while not path.exists():
        assert proc.returncode is None, "bmcs exited early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


async def test_bmcs_writes_the_inventory_once_listening_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    inventory = tmp_path / "inventory.yaml"
    ready = tmp_path / "ready"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodefence.hwsim.cli",
        "bmcs",
        "--nodes",
        "4",
        "--inventory-out",
        str(inventory),
        "--ready-file",
        str(ready),
        "--power-timeout",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        await _wait_for(ready, proc, time.monotonic() + 30)
        assert inventory.exists() and (tmp_path / "bmc-password").exists()
        assert (tmp_path / "tls").is_dir()
        control = ready.read_text().strip()

        check = await run_cli("bmc", "check", "-i", str(inventory))
        assert check.code == 0 and "8 devices checked, 0 failing" in check.out

        hurt = await run_cli(
            "fault", "--control", control, "node-4", "ignore_off=true", module="nodefence.hwsim.cli"
        )
        assert hurt.code == 0 and '"ignore_off": true' in hurt.out
        fenced = await run_cli("fence", "node-4", "-i", str(inventory), "-y")
        assert fenced.code == 1 and "not confirmed" in fenced.out

        typo = await run_cli(
            "fault",
            "--control",
            control,
            "node-4",
            "unreachabel=true",
            module="nodefence.hwsim.cli",
        )
        assert typo.code == 2 and "unknown fault 'unreachabel'" in typo.err
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0
    assert b"node-4: ipmi 127.0.0.1:" in out


async def test_readme_demo_plays_every_step_as_promised(tmp_path: Path) -> None:
    r = await run_cli(
        "demo", "--workdir", str(tmp_path / "demo"), module="nodefence.hwsim.cli", timeout=120
    )
    assert r.code == 0, r.out + r.err
    assert "demo: every outcome as promised" in r.out
    assert "FAIL " not in r.out


def test_the_cluster_prints_commands_that_work_when_pasted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's install leaves `nodefence` in .venv/bin, not on PATH: the printed commands
    name it by its full path, and the fault-control URL is given."""
    import shutil
    import subprocess
    from types import SimpleNamespace

    from nodefence.hwsim.cli import cluster_commands

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    fake = SimpleNamespace(
        kubeconfig=tmp_path / "kubeconfig",
        settings=SimpleNamespace(inventory=str(tmp_path / "inventory.yaml")),
        agent_config=lambda node: tmp_path / f"{node}.yaml",
    )
    lines = cluster_commands(fake, "http://127.0.0.1:4242", tmp_path)
    here = Path(sys.executable).parent
    status = next(line for line in lines if " status -c " in line)
    assert status.startswith(str(here / "nodefence") + " ")
    assert any("fault --control http://127.0.0.1:4242 node-3 power=cut" in x for x in lines)
    assert shutil.which("nodefence") is None  # as a pasting operator's shell has it
    done = subprocess.run(
        [*status.split()[:1], "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("nodefence ")
